import Foundation

/// One answer of the admin API.
public struct AdminResponse: Sendable {
    public let status: Int
    public let headers: [String: String]
    public let body: String

    /// The body parsed as JSON (an object or array), or nil.
    public var json: Any? { try? JSONSerialization.jsonObject(with: Data(body.utf8)) }
    public var object: [String: Any] { json as? [String: Any] ?? [:] }
}

/// A plain HTTP/1.0 client for the admin API on 127.0.0.1, bounded by a timeout.
public enum AdminClient {
    public static func request(port: UInt16, _ method: String = "GET", _ path: String, headers: [String: String] = [:],
                               body: String? = nil, timeout: Double = 10) throws -> AdminResponse {
        let socket = try TestSocket.connect(port: port, timeout: timeout)
        defer { socket.close() }
        var text = "\(method) \(path) HTTP/1.0\r\n"
        if headers["Host"] == nil { text += "Host: 127.0.0.1:\(port)\r\n" }
        for (name, value) in headers { text += "\(name): \(value)\r\n" }
        if let body { text += "Content-Length: \(body.utf8.count)\r\nContent-Type: application/json\r\n" }
        text += "\r\n" + (body ?? "")
        try socket.send(text)
        let raw = try socket.receiveAll()
        let answer = String(decoding: raw, as: UTF8.self)
        guard let split = answer.range(of: "\r\n\r\n") else { throw TestSocketError("not an HTTP answer: \(answer)", errno: 0) }
        let head = answer[..<split.lowerBound].split(separator: "\r\n")
        guard let statusLine = head.first, let status = Int(statusLine.split(separator: " ").dropFirst().first ?? "") else {
            throw TestSocketError("no status line: \(answer)", errno: 0)
        }
        var fields: [String: String] = [:]
        for line in head.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            fields[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return AdminResponse(status: status, headers: fields, body: String(answer[split.upperBound...]))
    }

    /// GET `path`, expecting 200 and a JSON object.
    public static func get(port: UInt16, _ path: String) throws -> [String: Any] {
        let answer = try request(port: port, "GET", path)
        guard answer.status == 200 else { throw TestSocketError("GET \(path): \(answer.status) \(answer.body)", errno: 0) }
        return answer.object
    }

    /// The backend `address` of pool `pool` in a `/status` answer.
    public static func backend(_ status: [String: Any], pool: String, _ address: String) -> [String: Any]? {
        let pools = status["pools"] as? [[String: Any]] ?? []
        let backends = pools.first { $0["name"] as? String == pool }?["backends"] as? [[String: Any]] ?? []
        return backends.first { $0["address"] as? String == address }
    }
}
