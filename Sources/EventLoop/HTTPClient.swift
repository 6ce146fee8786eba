import CLibevent
import Glibc

/// Why an HTTP call failed.
public enum HTTPClientError: Error, Equatable, Sendable, CustomStringConvertible {
    /// No answer within the call's timeout, or a stream silent for longer than its idle timeout.
    case timedOut(String)
    /// The connection could not be made, or it ended before the answer did.
    case connection(String)
    /// The server's answer is not HTTP, or is larger than the client accepts.
    case invalidResponse(String)
    /// A streamed call answered with a status outside 200-299; the body is its first 64 KiB.
    case status(Int, body: [UInt8])

    public var description: String {
        switch self {
        case .timedOut(let what), .connection(let what), .invalidResponse(let what): return what
        case .status(let code, let body):
            return "HTTP status \(code)" + (body.isEmpty ? "" : ": " + String(decoding: body.prefix(200), as: UTF8.self))
        }
    }
}

/// One complete answer.
public struct HTTPClientResponse: Equatable, Sendable {
    public let status: Int
    public let body: [UInt8]

    public init(status: Int, body: [UInt8]) {
        self.status = status
        self.body = body
    }
}

/// An HTTP/1.1 client on one keep-alive connection to `host:port` (an IP address), through libevent's
/// `evhttp`, for small JSON APIs such as etcd's gateway. Requests on one client run one after another; a
/// streamed answer (a watch) delivers its body as it arrives. Nothing blocks: every answer comes back
/// through a callback on the loop's thread.
///
/// Timeouts are the client's own timers, not evhttp's: evhttp 2.1 has one timeout for connecting and for
/// every read, which would end an idle stream. A call cancelled, or a client closed or released, from inside
/// one of its own callbacks is torn down on the loop's next turn, since libevent still uses the request when
/// the callback returns; nothing is delivered in between.
public final class HTTPClient {
    private let core: HTTPConnection

    /// `host` is an IP address (no name is resolved here). Answers larger than `maxBodySize` fail.
    public init(base: EventBase, host: String, port: UInt16, maxBodySize: Int = 64 << 20) {
        core = HTTPConnection(base: base, host: host, port: port, maxBodySize: maxBodySize)
    }

    deinit { core.close() }

    /// `host:port`, for logs.
    public var authority: String { core.authority }

    /// Sends a request with a JSON body (none when empty); `completion` gets the whole answer with its
    /// status, whatever it is, or the failure: once, unless the call is cancelled first.
    @discardableResult
    public func request(method: HTTPRequest.Method, path: String, body: [UInt8], timeout: Duration,
                        completion: @escaping (Result<HTTPClientResponse, HTTPClientError>) -> Void) -> HTTPCall {
        let call = HTTPCall(core: core, kind: .plain(completion), timeout: timeout, idleTimeout: nil)
        core.start(call, method: method, path: path, body: body)
        return call
    }

    /// Sends a request whose answer is a stream: `onChunk` gets the body's bytes as they arrive (split
    /// anywhere), then `completion` the status once the answer ends, or the failure. `timeout` bounds the
    /// wait for the answer's headers; `idleTimeout`, if any, each silence after them. A status outside
    /// 200-299 delivers no chunk and fails with `.status`.
    @discardableResult
    public func stream(method: HTTPRequest.Method, path: String, body: [UInt8], timeout: Duration,
                       idleTimeout: Duration? = nil, onChunk: @escaping ([UInt8]) -> Void,
                       completion: @escaping (Result<Int, HTTPClientError>) -> Void) -> HTTPCall {
        let call = HTTPCall(core: core, kind: .stream(onChunk: onChunk, completion: completion), timeout: timeout,
                            idleTimeout: idleTimeout)
        core.start(call, method: method, path: path, body: body)
        return call
    }

    /// Cancels every call and drops the connection; nothing is delivered afterwards. Releasing the client
    /// does the same.
    public func close() { core.close() }
}

/// A request in flight. `cancel()` ends it: nothing of it is delivered afterwards, not even by a callback of
/// the same call that is running now.
public final class HTTPCall {
    enum Kind {
        case plain((Result<HTTPClientResponse, HTTPClientError>) -> Void)
        case stream(onChunk: ([UInt8]) -> Void, completion: (Result<Int, HTTPClientError>) -> Void)
    }

    let core: HTTPConnection
    /// Libevent's request while libevent holds it; the call keeps one reference of its own for libevent's
    /// callbacks until then.
    var request: OpaquePointer?
    /// Nil once ended: delivered, cancelled or closed.
    var kind: Kind?
    let isStream: Bool
    let timeout: Int64
    let idleTimeout: Int64?
    var timer: Timer?
    var status = 0
    var body: [UInt8] = []
    var error: evhttp_request_error?
    var systemError: Int32 = 0
    /// The connection was up while this call was in flight.
    var connected = false
    var headersSeen = false

    init(core: HTTPConnection, kind: Kind, timeout: Duration, idleTimeout: Duration?) {
        self.core = core
        self.kind = kind
        if case .stream = kind { isStream = true } else { isStream = false }
        self.timeout = HTTPConnection.microseconds(timeout)
        self.idleTimeout = idleTimeout.map(HTTPConnection.microseconds)
    }

    /// Whether it may still deliver something.
    public var isActive: Bool { kind != nil }

    public func cancel() {
        guard kind != nil else { return }
        end()
        core.abandon(self)
    }

    /// Nothing more is delivered.
    func end() {
        kind = nil
        timer?.cancel()
    }
}

/// The evhttp connection of one `HTTPClient`, and the bookkeeping that keeps libevent's callbacks safe.
final class HTTPConnection {
    let base: EventBase
    let host: String
    let port: UInt16
    let authority: String
    private let maxBodySize: Int
    private var connection: OpaquePointer?
    /// Calls whose request libevent holds.
    private var calls: [HTTPCall] = []
    /// Libevent callbacks of this connection on the stack: teardown waits until there are none.
    private var dispatching = 0
    private var cleanupScheduled = false
    private var closed = false

    init(base: EventBase, host: String, port: UInt16, maxBodySize: Int) {
        self.base = base
        self.host = host
        self.port = port
        self.maxBodySize = maxBodySize
        authority = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        connection = evhttp_connection_base_new(base.base, nil, host, port)
        if let connection {
            // Effectively never: each call's own timer bounds it.
            var day = timeval(tv_sec: 86_400, tv_usec: 0)
            evhttp_connection_set_timeout_tv(connection, &day)
            evhttp_connection_set_retries(connection, 0)
            // Called only when an established connection closes (before the request's error callback): a
            // failure without it never connected.
            evhttp_connection_set_closecb(connection, { _, context in
                let core = Unmanaged<HTTPConnection>.fromOpaque(context!).takeUnretainedValue()
                for call in core.calls { call.connected = true }
            }, Unmanaged.passUnretained(self).toOpaque())
        }
    }

    deinit {
        // Only reached once closed (the client closes it, and a scheduled cleanup holds it until it ran).
        if let connection {
            evhttp_connection_set_closecb(connection, nil, nil)
            evhttp_connection_free(connection)
        }
    }

    func close() {
        guard !closed else { return }
        closed = true
        for call in calls + pendingFailures { call.end() }
        pendingFailures.removeAll()
        if dispatching > 0 { scheduleCleanup() } else { cleanup() }
    }

    // MARK: - Starting

    func start(_ call: HTTPCall, method: HTTPRequest.Method, path: String, body: [UInt8]) {
        guard !closed else { return failSoon(call, .connection("the client is closed")) }
        guard let connection else { return failSoon(call, .connection("cannot set up a connection to \(authority)")) }
        let context = Unmanaged.passUnretained(call).toOpaque()
        guard let request = evhttp_request_new({ request, context in
            HTTPConnection.finished(request, Unmanaged<HTTPCall>.fromOpaque(context!).takeUnretainedValue())
        }, context) else {
            return failSoon(call, .connection("out of memory for a request"))
        }
        evhttp_request_set_error_cb(request) { error, context in
            let call = Unmanaged<HTTPCall>.fromOpaque(context!).takeUnretainedValue()
            call.error = error
            // The socket's error, which libevent leaves in errno when a connect fails.
            call.systemError = errno
        }
        evhttp_request_set_header_cb(request) { request, context in
            let call = Unmanaged<HTTPCall>.fromOpaque(context!).takeUnretainedValue()
            call.headersSeen = true
            call.connected = true
            call.status = Int(evhttp_request_get_response_code(request))
            call.core.headersArrived(call)
            return 0
        }
        // Every body goes through here as it arrives, so that its size is bounded while it is read.
        evhttp_request_set_chunked_cb(request) { request, context in
            HTTPConnection.chunk(request, Unmanaged<HTTPCall>.fromOpaque(context!).takeUnretainedValue())
        }
        let headers = evhttp_request_get_output_headers(request)
        evhttp_add_header(headers, "Host", authority)
        evhttp_add_header(headers, "User-Agent", "fulcrum")
        if !body.isEmpty {
            evhttp_add_header(headers, "Content-Type", "application/json")
            body.withUnsafeBytes { _ = evbuffer_add(evhttp_request_get_output_buffer(request), $0.baseAddress, $0.count) }
        }
        let command: evhttp_cmd_type
        switch method {
        case .get: command = EVHTTP_REQ_GET
        case .head: command = EVHTTP_REQ_HEAD
        case .put: command = EVHTTP_REQ_PUT
        case .delete: command = EVHTTP_REQ_DELETE
        case .options: command = EVHTTP_REQ_OPTIONS
        case .post, .other: command = EVHTTP_REQ_POST
        }
        call.timer = Timer(base: base) { [weak call] in
            guard let call else { return }
            call.core.timedOut(call)
        }
        call.timer?.schedule(after: call.timeout)
        // On failure evhttp_make_request has freed the request already.
        guard evhttp_make_request(connection, request, command, path) == 0 else {
            return failSoon(call, .connection("could not send a request to \(authority)"))
        }
        call.request = request
        calls.append(call)
        _ = Unmanaged.passRetained(call)
    }

    /// Fails a call that libevent never took, on the loop's next turn: a completion never runs inside the
    /// call that started the request.
    private func failSoon(_ call: HTTPCall, _ error: HTTPClientError) {
        pendingFailures.append(call)
        call.timer = Timer(base: base) { [weak self, weak call] in
            guard let call else { return }
            self?.pendingFailures.removeAll { $0 === call }
            HTTPConnection.deliver(call, .failure(error))
        }
        call.timer?.schedule(after: 0)
    }

    /// Calls failed before libevent took them, held until their failure is delivered.
    private var pendingFailures: [HTTPCall] = []

    // MARK: - Callbacks from libevent

    private func headersArrived(_ call: HTTPCall) {
        guard call.isActive, call.isStream, (200...299).contains(call.status) else { return }
        // From here a stream may be silent for as long as its idle timeout allows.
        if let idle = call.idleTimeout { call.timer?.schedule(after: idle) } else { call.timer?.cancel() }
    }

    private static func chunk(_ request: OpaquePointer?, _ call: HTTPCall) {
        guard let request, call.isActive, let buffer = evhttp_request_get_input_buffer(request) else { return }
        let length = evbuffer_get_length(buffer)
        guard length > 0 else { return }
        var bytes = [UInt8](repeating: 0, count: length)
        _ = bytes.withUnsafeMutableBytes { evbuffer_remove(buffer, $0.baseAddress, length) }
        let core = call.core
        guard call.isStream, (200...299).contains(call.status) else {
            // A plain answer, or a stream's error: kept, within bounds.
            let limit = call.isStream ? 64 << 10 : core.maxBodySize
            if call.body.count + bytes.count > limit {
                if call.isStream { return call.body += bytes.prefix(limit - call.body.count) }
                core.dispatching += 1
                defer { core.dispatching -= 1 }
                core.abandon(call)
                return deliver(call, .failure(.invalidResponse("the answer from \(core.authority) is larger than \(limit) bytes")))
            }
            call.body += bytes
            return
        }
        if let idle = call.idleTimeout { call.timer?.schedule(after: idle) }
        guard case .stream(let onChunk, _) = call.kind else { return }
        core.dispatching += 1
        defer { core.dispatching -= 1 }
        onChunk(bytes)
    }

    /// Libevent is done with the request (answered, or failed); it frees it after this returns.
    private static func finished(_ request: OpaquePointer?, _ call: HTTPCall) {
        let core = call.core
        guard call.request != nil else { return }
        call.request = nil
        core.calls.removeAll { $0 === call }
        defer { Unmanaged.passUnretained(call).release() }
        guard call.isActive else { return }
        core.dispatching += 1
        defer { core.dispatching -= 1 }
        let status = request.map { Int(evhttp_request_get_response_code($0)) } ?? 0
        guard status != 0 else { return deliver(call, .failure(core.failure(call))) }
        if let request, let buffer = evhttp_request_get_input_buffer(request), evbuffer_get_length(buffer) > 0 {
            let length = evbuffer_get_length(buffer)
            let start = call.body.count
            call.body += [UInt8](repeating: 0, count: length)
            _ = call.body.withUnsafeMutableBytes { evbuffer_remove(buffer, $0.baseAddress! + start, length) }
        }
        deliver(call, .success(HTTPClientResponse(status: status, body: call.body)))
    }

    private func failure(_ call: HTTPCall) -> HTTPClientError {
        switch call.error {
        case nil:
            // evhttp 2.1 reports a connect refused at once by calling back with no answer and no error.
            return .connection("cannot connect to \(authority): connection refused")
        case EVREQ_HTTP_TIMEOUT?:
            return .timedOut("no answer from \(authority)")
        case EVREQ_HTTP_INVALID_HEADER?:
            return .invalidResponse("\(authority) sent a malformed HTTP answer")
        case EVREQ_HTTP_DATA_TOO_LONG?:
            return .invalidResponse("the answer from \(authority) is too large")
        default:
            if call.headersSeen { return .connection("connection to \(authority) closed before the answer ended") }
            if call.connected { return .connection("connection to \(authority) closed before an answer") }
            // libevent leaves the socket's error in errno; it is only a detail of the message.
            let why = [ECONNREFUSED, ECONNRESET, EHOSTUNREACH, ENETUNREACH, ETIMEDOUT].contains(call.systemError)
                ? ": " + String(cString: strerror(call.systemError)).lowercased() : ""
            return .connection("cannot connect to \(authority)\(why)")
        }
    }

    private static func deliver(_ call: HTTPCall, _ result: Result<HTTPClientResponse, HTTPClientError>) {
        guard let kind = call.kind else { return }
        call.end()
        switch kind {
        case .plain(let completion):
            completion(result)
        case .stream(_, let completion):
            switch result {
            case .success(let response) where (200...299).contains(response.status):
                completion(.success(response.status))
            case .success(let response):
                completion(.failure(.status(response.status, body: Array(response.body.prefix(64 << 10)))))
            case .failure(let error):
                completion(.failure(error))
            }
        }
    }

    private func timedOut(_ call: HTTPCall) {
        guard call.isActive else { return }
        let what = call.headersSeen && call.isStream
            ? "\(authority) sent nothing for \(Self.text(call.idleTimeout ?? 0))"
            : "no answer from \(authority) within \(Self.text(call.timeout))"
        // Outside libevent's callbacks: the request is cancelled at once (its error callback only records).
        abandon(call)
        Self.deliver(call, .failure(.timedOut(what)))
    }

    // MARK: - Teardown

    /// Gives an ended call's request back to libevent: at once outside libevent's callbacks, else on the
    /// loop's next turn.
    func abandon(_ call: HTTPCall) {
        guard call.request != nil else { return }
        if dispatching > 0 { return scheduleCleanup() }
        cancelRequest(call)
    }

    private func cancelRequest(_ call: HTTPCall) {
        guard let request = call.request else { return }
        call.request = nil
        calls.removeAll { $0 === call }
        // Frees the request; its error callback runs inside and only records the error.
        evhttp_cancel_request(request)
        Unmanaged.passUnretained(call).release()
    }

    private func scheduleCleanup() {
        guard !cleanupScheduled else { return }
        cleanupScheduled = true
        // Holds the connection until the cleanup ran, even if its client is released now.
        let context = Unmanaged.passRetained(self).toOpaque()
        var now = timeval(tv_sec: 0, tv_usec: 0)
        event_base_once(base.base, -1, Int16(EV_TIMEOUT), { _, _, context in
            let core = Unmanaged<HTTPConnection>.fromOpaque(context!).takeRetainedValue()
            core.cleanupScheduled = false
            core.cleanup()
        }, context, &now)
    }

    /// Outside every callback: cancels the requests of ended calls, and frees the connection once closed.
    private func cleanup() {
        guard !closed else {
            let pending = calls
            calls.removeAll()
            if let connection {
                // Frees every pending request without calling back.
                evhttp_connection_set_closecb(connection, nil, nil)
                evhttp_connection_free(connection)
                self.connection = nil
            }
            for call in pending where call.request != nil {
                call.request = nil
                Unmanaged.passUnretained(call).release()
            }
            return
        }
        for call in calls where !call.isActive { cancelRequest(call) }
    }

    // MARK: - Time

    static func microseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        return max(0, seconds * 1_000_000 + attoseconds / 1_000_000_000_000)
    }

    static func text(_ microseconds: Int64) -> String {
        microseconds % 1_000_000 == 0 ? "\(microseconds / 1_000_000)s" : "\(microseconds / 1000)ms"
    }
}
