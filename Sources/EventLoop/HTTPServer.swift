import CLibevent
import Glibc

/// One HTTP request as the admin server sees it: everything copied out of libevent, so handlers never
/// touch its structures.
public struct HTTPRequest: Sendable {
    public enum Method: String, Sendable {
        case get = "GET", head = "HEAD", post = "POST", put = "PUT", delete = "DELETE", options = "OPTIONS", other = "OTHER"
    }

    public let method: Method
    /// The decoded path, without the query.
    public let path: String
    /// The raw query string (after `?`), empty when there is none.
    public let query: String
    public let body: [UInt8]
    /// The peer's address, `ip:port`.
    public let peer: String
    let headerValues: [String: String]

    /// The value of a request header (case-insensitive name), if present.
    public func header(_ name: String) -> String? { headerValues[name.lowercased()] }
}

/// The answer to one request. A handler replies at once or keeps the responder and replies later (once
/// every worker has applied a change); a client that disconnects meanwhile makes the late reply a no-op.
public final class HTTPResponder {
    private var request: OpaquePointer?
    private var watchingClose = false

    init(_ request: OpaquePointer) { self.request = request }

    /// Whether the reply can still be sent.
    public var isOpen: Bool { request != nil }

    /// Sends the reply (status, extra headers, body). Only the first call counts.
    public func send(status: Int, reason: String, contentType: String, headers: [(String, String)] = [],
                     body: [UInt8]) {
        guard let request else { return }
        self.request = nil
        if watchingClose, let connection = evhttp_request_get_connection(request) {
            evhttp_connection_set_closecb(connection, nil, nil)
        }
        let output = evhttp_request_get_output_headers(request)
        evhttp_add_header(output, "Content-Type", contentType)
        evhttp_add_header(output, "Cache-Control", "no-store")
        for (name, value) in headers { evhttp_add_header(output, name, value) }
        let buffer = evbuffer_new()
        body.withUnsafeBytes { _ = evbuffer_add(buffer, $0.baseAddress, $0.count) }
        evhttp_send_reply(request, Int32(status), reason, buffer)
        evbuffer_free(buffer)
        if watchingClose { Unmanaged.passUnretained(self).release() }
    }

    /// Keeps the request for a later reply; if the client goes away first, the reply is dropped.
    public func keepForLater() {
        guard let request, !watchingClose, let connection = evhttp_request_get_connection(request) else { return }
        watchingClose = true
        // Held until the reply or the close, whichever comes first.
        let context = Unmanaged.passRetained(self).toOpaque()
        evhttp_connection_set_closecb(connection, { _, context in
            let responder = Unmanaged<HTTPResponder>.fromOpaque(context!)
            let object = responder.takeUnretainedValue()
            object.request = nil
            responder.release()
        }, context)
    }
}

/// A small HTTP/1.1 server on an event loop, through libevent's own `evhttp`: for the admin API, on the
/// main thread's loop, never on a worker. Bounded: request bodies and headers have size limits (evhttp
/// answers 413 beyond them), and a client that sends nothing for `timeoutSeconds` is disconnected.
public final class HTTPServer {
    private var http: OpaquePointer?
    private let handler: (HTTPRequest, HTTPResponder) -> Void
    /// The address the server listens on (port 0 resolved).
    public let endpoint: Endpoint

    public init(base: EventBase, endpoint: Endpoint, maxBodySize: Int, maxHeadersSize: Int, timeoutSeconds: Int32,
                handler: @escaping (HTTPRequest, HTTPResponder) -> Void) throws(SystemError) {
        self.handler = handler
        let fd = try Socket.listen(endpoint, reusePort: false, claim: true, backlog: 128)
        do throws(SystemError) {
            self.endpoint = try Socket.localEndpoint(fd)
        } catch {
            Glibc.close(fd)
            throw error
        }
        guard let http = evhttp_new(base.base) else {
            Glibc.close(fd)
            throw SystemError("evhttp_new", errno: ENOMEM)
        }
        self.http = http
        evhttp_set_max_body_size(http, Int(maxBodySize))
        evhttp_set_max_headers_size(http, Int(maxHeadersSize))
        evhttp_set_timeout(http, timeoutSeconds)
        let methods = UInt16(EVHTTP_REQ_GET.rawValue | EVHTTP_REQ_HEAD.rawValue | EVHTTP_REQ_POST.rawValue
            | EVHTTP_REQ_PUT.rawValue | EVHTTP_REQ_DELETE.rawValue | EVHTTP_REQ_OPTIONS.rawValue)
        evhttp_set_allowed_methods(http, methods)
        evhttp_set_gencb(http, { request, context in
            guard let request, let context else { return }
            let server = Unmanaged<HTTPServer>.fromOpaque(context).takeUnretainedValue()
            server.handler(HTTPServer.read(request), HTTPResponder(request))
        }, Unmanaged.passUnretained(self).toOpaque())
        // evhttp owns the socket from here and closes it when freed.
        if evhttp_accept_socket(http, fd) != 0 {
            Glibc.close(fd)
            evhttp_free(http)
            self.http = nil
            throw SystemError("evhttp_accept_socket", errno: errno)
        }
    }

    deinit { close() }

    /// Stops listening and drops every connection.
    public func close() {
        if let http { evhttp_free(http) }
        http = nil
    }

    private static let headerNames = ["authorization", "origin", "host", "x-fulcrum-request", "content-type",
                                      "accept", "sec-fetch-site"]

    private static func read(_ request: OpaquePointer) -> HTTPRequest {
        let method: HTTPRequest.Method
        switch evhttp_request_get_command(request) {
        case EVHTTP_REQ_GET: method = .get
        case EVHTTP_REQ_HEAD: method = .head
        case EVHTTP_REQ_POST: method = .post
        case EVHTTP_REQ_PUT: method = .put
        case EVHTTP_REQ_DELETE: method = .delete
        case EVHTTP_REQ_OPTIONS: method = .options
        default: method = .other
        }
        var path = "/"
        var query = ""
        if let uri = evhttp_request_get_evhttp_uri(request) {
            if let raw = evhttp_uri_get_path(uri), let decoded = evhttp_uridecode(raw, 0, nil) {
                path = String(cString: decoded)
                free(decoded)
            }
            if let raw = evhttp_uri_get_query(uri) { query = String(cString: raw) }
        }
        var headers: [String: String] = [:]
        let input = evhttp_request_get_input_headers(request)
        for name in headerNames {
            if let value = evhttp_find_header(input, name) { headers[name] = String(cString: value) }
        }
        var body: [UInt8] = []
        if let buffer = evhttp_request_get_input_buffer(request) {
            let length = evbuffer_get_length(buffer)
            if length > 0 {
                body = [UInt8](repeating: 0, count: length)
                _ = body.withUnsafeMutableBytes { evbuffer_remove(buffer, $0.baseAddress, length) }
            }
        }
        var peer = ""
        if let connection = evhttp_request_get_connection(request) {
            var address: UnsafeMutablePointer<CChar>?
            var port: UInt16 = 0
            evhttp_connection_get_peer(connection, &address, &port)
            if let address { peer = "\(String(cString: address)):\(port)" }
        }
        return HTTPRequest(method: method, path: path, query: query, body: body, peer: peer, headerValues: headers)
    }
}
