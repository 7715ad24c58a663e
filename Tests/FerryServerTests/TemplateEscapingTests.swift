import Foundation
import FerryJobs
@testable import FerryServer
import FerryTestSupport
import Testing

/// Every value a page writes is escaped byte by byte: a quote stays a quote for the escaping even
/// when a combining mark or a zero-width joiner follows it (one `Character` with it in Swift).
@Suite struct TemplateEscapingTests {
    static let hostileNames = [
        "results\"\u{200D} data-name=\"notes.txt",
        "results\"\u{0301} checked autofocus x=\"",
        "it's'\u{0301}<b\u{0301}>&\u{0301}amp;",
    ]

    @Test(arguments: hostileNames)
    func aQuoteWithACombiningMarkCannotLeaveItsAttribute(name: String) async throws {
        let templates = try await Web.templates()
        let row: [String: Any] = ["name": name, "path": "/p/a/" + name, "type": "file", "isDirectory": false,
                                  "sizeText": "1 B", "modifiedText": "today", "owner": "alice", "mode": "-rw-r--r--"]
        let html = try #require(templates.render(["title": "t", "path": "/p/a", "pathShown": "/p/a", "entries": [row]],
                                                 withTemplate: "browse"))
        for raw in ["\"", "'", "<", ">", "&"] {
            for mark in ["\u{200D}", "\u{0301}"] {
                #expect(!html.contains(raw + mark), "\(raw) before U+\(String(mark.unicodeScalars.first!.value, radix: 16)) left unescaped")
            }
        }
        let rowStart = try #require(html.range(of: "<tr data-path="))
        let rowText = String(html[rowStart.lowerBound...].prefix { $0 != "\n" })
        #expect(rowText.components(separatedBy: " data-name=\"").count == 2, "\(rowText)")
        #expect(ByteHTMLEscaping.escape(name).unicodeScalars.allSatisfy { !"\"'<>".unicodeScalars.contains($0) })
    }

    @Test func aTemplateWithoutTheEscapingPragmaIsRefused() async throws {
        let directory = try TemporaryDirectory.make(prefix: "ferry-templates")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try "\(ByteHTMLEscaping.pragma)\n<p>{{a}}</p>\n".write(toFile: directory + "/good.mustache", atomically: true, encoding: .utf8)
        _ = try await ByteHTMLEscaping.library(directory: directory)
        try "<p>{{a}}</p>\n".write(toFile: directory + "/bad.mustache", atomically: true, encoding: .utf8)
        await #expect(throws: ByteHTMLEscaping.TemplateWithoutEscaping.self) {
            _ = try await ByteHTMLEscaping.library(directory: directory)
        }
    }
}

/// A failing task database is a passing fault for the client (503, try again); its own words (SQL,
/// host names, paths) go to the server's log only.
@Suite struct DatabaseErrorAnswerTests {
    @Test func aDatabaseErrorIsA503WithoutTheDatabasesWords() async {
        await #expect {
            _ = try await Routes.database { () async throws -> Int in
                throw TaskStoreError.database("ERROR: relation \"tasks\" does not exist at db.internal:5432")
            }
        } throws: { error in
            guard let error = error as? APIError else { return false }
            return error.status == .unavailable && error.code == "database" && !error.message.contains("db.internal")
                && !error.message.contains("relation")
        }
    }
}
