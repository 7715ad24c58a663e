import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// The request context: who is asking (once the auth middleware has decided) and from where.
public struct FerryContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public let remoteAddress: String?
    public var principal: Principal?
    public var session: SessionStore.Session?
    /// Authenticated by `Authorization: Bearer`, which a browser never adds on its own: no CSRF token needed.
    public var viaBearer = false

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress?.ipAddress
    }
}

extension APIError {
    var httpStatus: HTTPResponse.Status { .init(code: status.rawValue) }

    func response(headers: HTTPFields = [:]) -> Response {
        let body = (try? WireJSON.encoder.encode(["error": ["code": code, "message": message]])) ?? Data()
        var fields = headers
        fields[.contentType] = "application/json; charset=utf-8"
        fields[.cacheControl] = "no-store"
        fields[Reply.noSniff] = "nosniff"
        return Response(status: httpStatus, headers: fields, body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }
}

enum Reply {
    static func json(_ data: Data, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json; charset=utf-8", .cacheControl: "no-store", noSniff: "nosniff"],
                 body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static func json<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) throws -> Response {
        json(try WireJSON.encoder.encode(value), status: status)
    }

    static func html(_ text: String, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]) -> Response {
        var fields = headers
        fields[.contentType] = "text/html; charset=utf-8"
        fields[.cacheControl] = "no-store"
        fields[.init("X-Frame-Options")!] = "DENY"
        fields[noSniff] = "nosniff"
        fields[.init("Referrer-Policy")!] = "same-origin"
        fields[.init("Content-Security-Policy")!] =
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
        return Response(status: status, headers: fields, body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    /// Browsers take a response for what its Content-Type says, not what they guess.
    static let noSniff = HTTPField.Name("X-Content-Type-Options")!

    static func redirect(_ location: String, headers: HTTPFields = [:]) -> Response {
        var fields = headers
        fields[.location] = location
        return Response(status: .seeOther, headers: fields)
    }
}

/// Query strings and form bodies, decoded strictly to bytes first: a `%FF` or `%00` is reported
/// as such instead of being silently replaced.
enum FormData {
    /// nil value: present but not valid UTF-8.
    static func parse(_ raw: String?) -> [String: String?] {
        var fields: [String: String?] = [:]
        for pair in (raw ?? "").split(separator: "&", omittingEmptySubsequences: true) {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let key = decode(parts[0]) else { continue }
            let value: String? = parts.count > 1 ? decode(parts[1]) : ""
            if fields[key] == nil { fields[key] = .some(value) }
        }
        return fields
    }

    /// Percent- and plus-decoded; nil when the bytes are not UTF-8.
    static func decode(_ text: Substring) -> String? {
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            switch byte {
            case UInt8(ascii: "+"): bytes.append(0x20)
            case UInt8(ascii: "%"):
                // Two hex digits, nothing else: `UInt8(_:radix:)` alone also takes "+F" or "-0".
                guard let high = iterator.next(), let low = iterator.next(), isHexDigit(high), isHexDigit(low),
                      let value = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16) else { return nil }
                bytes.append(value)
            default: bytes.append(byte)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }

    static func isHexDigit(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
            || (UInt8(ascii: "A")...UInt8(ascii: "F")).contains(byte)
    }
}

extension Request {
    /// A query parameter: nil when absent; throws `path.invalid`-style errors for broken encodings.
    func query(_ name: String) throws(APIError) -> String? {
        let fields = FormData.parse(uri.query)
        guard let value = fields[name] else { return nil }
        guard let value else { throw APIError(.badRequest, name == "path" ? "path.invalid" : "request.invalid", "\(name) is not valid UTF-8") }
        return value
    }

    func cookie(_ name: String) -> String? {
        for header in headers[values: .cookie] {
            for part in header.split(separator: ";") {
                let pair = part.trimmingCharacters(in: .whitespaces).split(separator: "=", maxSplits: 1)
                if pair.count == 2 && pair[0] == name { return String(pair[1]) }
            }
        }
        return nil
    }

    /// The body as JSON of `type`; a clear 400 when it is not.
    mutating func decodeJSON<T: Decodable>(_ type: T.Type) async throws(APIError) -> T {
        let buffer: ByteBuffer
        do { buffer = try await collectBody(upTo: 1 << 20) } catch {
            throw APIError(.badRequest, "request.invalid", "the request body is missing or larger than 1 MiB")
        }
        do { return try WireJSON.decoder.decode(type, from: Data(buffer.readableBytesView)) } catch {
            throw APIError(.badRequest, "request.invalid", "the request body is not the expected JSON: \(error)")
        }
    }
}
