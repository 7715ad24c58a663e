import Foundation
import Mustache

/// HTML escaping that looks at each byte, for every value a template writes. Mustache's own HTML
/// escaping looks up whole `Character`s, and a quote followed by a combining mark or a zero-width
/// joiner is one `Character` that is not a quote: it was written out raw. A file name such as
/// `results"` + U+200D + ` data-name="notes.txt` then closed the attribute it was in, and the
/// browse page offered to move `results` under the name `notes.txt`.
struct ByteHTMLEscaping: MustacheContentType {
    static let name = "FERRY_HTML"
    /// The line every template starts with (checked when the templates load).
    static let pragma = "{{% CONTENT_TYPE: \(name)}}"

    func escapeText(_ text: String) -> String { Self.escape(text) }

    static func escape(_ text: String) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "<"): bytes += Array("&lt;".utf8)
            case UInt8(ascii: ">"): bytes += Array("&gt;".utf8)
            case UInt8(ascii: "&"): bytes += Array("&amp;".utf8)
            case UInt8(ascii: "\""): bytes += Array("&quot;".utf8)
            case UInt8(ascii: "'"): bytes += Array("&#39;".utf8)
            default: bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Loads the templates in `directory`, each of which must start with `pragma`, so that none
    /// renders with Mustache's default escaping.
    static func library(directory: String) async throws -> MustacheLibrary {
        MustacheContentTypes.register(ByteHTMLEscaping(), named: name)
        // Every template the library loads, in subdirectories too.
        let names = (FileManager.default.enumerator(atPath: directory)?.allObjects as? [String] ?? []).filter { $0.hasSuffix(".mustache") }
        for file in names {
            let text = try String(contentsOfFile: directory + "/" + file, encoding: .utf8)
            guard text.hasPrefix(pragma) else {
                throw TemplateWithoutEscaping(file: file)
            }
        }
        return try await MustacheLibrary(directory: directory)
    }

    struct TemplateWithoutEscaping: Error, CustomStringConvertible {
        let file: String
        var description: String { "template \(file) does not start with \(ByteHTMLEscaping.pragma)" }
    }
}
