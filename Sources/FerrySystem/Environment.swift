import Glibc

/// Environment variables, read one at a time. `Environment.process` asks `getenv`: building the
/// whole environment as a dictionary (`ProcessInfo.environment`) cost a same-project `ferry move`
/// about a quarter of its time, most of it the runtime's first lookups of the dictionary's generic
/// type. Given values (a dictionary literal) stand in for the process's in tests.
public struct Environment: Sendable, ExpressibleByDictionaryLiteral {
    private let values: [(name: String, value: String)]?

    public static let process = Environment(values: nil)

    private init(values: [(name: String, value: String)]?) { self.values = values }

    public init(dictionaryLiteral elements: (String, String)...) {
        values = elements.map { (name: $0.0, value: $0.1) }
    }

    public subscript(_ name: String) -> String? {
        guard let values else { return getenv(name).map { String(cString: $0) } }
        return values.last { $0.name == name }?.value
    }
}

/// This process's arguments as they were given. `CommandLine.arguments` decodes each one as UTF-8
/// and puts U+FFFD for bytes that are not, so `caf\xE9` (Latin-1) would arrive as `caf�` — the
/// name of another file. These are the bytes, and a text form for parsers that want strings.
public enum ProcessArguments {
    public static var bytes: [ByteString] {
        (0..<Int(CommandLine.argc)).map { index in
            guard let argument = CommandLine.unsafeArgv[index] else { return [] }
            return ByteString(UnsafeRawBufferPointer(start: argument, count: strlen(argument)))
        }
    }

    /// Each argument as text: valid UTF-8 as itself (a URL, a user name, a JSON request reach
    /// their parsers unchanged); any other as `PathText`, which `pathBytes` turns back.
    public static var text: [String] { bytes.map { String(validating: $0, as: UTF8.self) ?? PathText.encode($0) } }

    /// The bytes of a path that was given as an argument and parsed as `text`: `PathText`
    /// decoded where the argument was not UTF-8 (the decoded bytes are one of the arguments, and
    /// the text itself is not), else the text's own UTF-8.
    public static func pathBytes(_ argument: String) -> ByteString {
        let utf8 = Array(argument.utf8)
        guard utf8.contains(0xEF) else { return utf8 }  // no escape character in it
        let given = bytes
        let decoded = PathText.decode(argument)
        return given.contains(decoded) && !given.contains(utf8) ? decoded : utf8
    }
}
