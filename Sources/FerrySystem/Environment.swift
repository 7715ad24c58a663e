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
/// name of another file. These are the bytes, and the text form that gives them back
/// (`PathText`), for parsers that want strings.
public enum ProcessArguments {
    public static var bytes: [ByteString] {
        (0..<Int(CommandLine.argc)).map { index in
            guard let argument = CommandLine.unsafeArgv[index] else { return [] }
            return ByteString(UnsafeRawBufferPointer(start: argument, count: strlen(argument)))
        }
    }

    /// Each argument as `PathText`: valid UTF-8 is itself; `PathText.decode` gives the bytes back.
    public static var text: [String] { bytes.map { PathText.encode($0) } }
}
