import EventLoop
import FulcrumCore
import Glibc
import Logging

/// The admin API (`admin:`): status, event histories, metrics, the status page, and runtime changes, served
/// by libevent's HTTP server on the main thread's loop, never on a worker.
///
/// - Reads are open to whoever can reach the address. Every request that changes something (POST, PUT,
///   DELETE) needs `Authorization: Bearer <token>` when a token is configured (compared in constant time;
///   a wrong or missing token is answered 401 and logged).
/// - Cross-site requests cannot change anything: a changing request that carries an `Origin` must come
///   from the admin's own origin, and one a browser marks `Sec-Fetch-Site: cross-site` is refused (403).
///   Clients that are not browsers (curl, scripts) send neither and are not affected.
/// - A change is answered once every worker has applied it.
/// - Bounded: bodies over 64 KiB get 413, headers over 16 KiB are refused, a client idle for 10 s is
///   disconnected, unknown paths get 404 and wrong methods 405, with a JSON error body.
final class AdminServer {
    static let maxBodySize = 64 << 10
    static let maxHeadersSize = 16 << 10
    static let timeoutSeconds: Int32 = 10

    private let state: LiveState
    private let configPath: String?
    private var logger: Logger
    private let started: Int64
    private var server: HTTPServer?
    private(set) var settings: FulcrumConfig.Admin
    private var token: [UInt8]?
    /// Serves `GET /`.
    var page: () -> String = { "" }
    /// Serves `GET /metrics`.
    var metrics: (() -> String)?
    /// `POST /reload`: what the engine does on SIGHUP.
    var reload: (() -> LiveState.ReloadOutcome)?

    var endpoint: Endpoint? { server?.endpoint }

    init(settings: FulcrumConfig.Admin, state: LiveState, configPath: String?, logger: Logger) throws(SystemError) {
        self.settings = settings
        self.state = state
        self.configPath = configPath
        self.logger = logger
        started = state.base.monotonicMicroseconds
        token = try Self.readToken(settings.token)
        try listen()
    }

    private func listen() throws(SystemError) {
        server = try HTTPServer(base: state.base, endpoint: Endpoint(settings.address), maxBodySize: Self.maxBodySize,
                                maxHeadersSize: Self.maxHeadersSize, timeoutSeconds: Self.timeoutSeconds) { [unowned self] request, responder in
            self.handle(request, responder)
        }
        logger.info("admin API on http://\(server!.endpoint)/", metadata: [
            "token": "\(settings.token == nil ? "none (loopback only)" : "required for changes")",
        ])
    }

    func close() {
        server?.close()
        server = nil
    }

    /// A reload changed `admin:` (or kept it: the token file is read again either way). A new address is
    /// bound before the old one closes; if that fails, or the token cannot be read, the admin stays as it
    /// was and the error is logged.
    func apply(_ new: FulcrumConfig.Admin) {
        do throws(SystemError) {
            let newToken = try Self.readToken(new.token)
            if new.address != settings.address {
                let old = server
                let oldSettings = settings
                settings = new
                do throws(SystemError) {
                    try listen()
                } catch {
                    settings = oldSettings
                    server = old
                    throw error
                }
                old?.close()
            }
            settings = new
            token = newToken
        } catch {
            logger.error("admin: the reload's admin settings could not be applied; the admin API stays as it was", metadata: [
                "error": "\(error)",
            ])
        }
    }

    /// The token's bytes, read from its source; nil when none is configured.
    static func readToken(_ token: FulcrumConfig.Admin.Token?) throws(SystemError) -> [UInt8]? {
        switch token {
        case nil:
            return nil
        case .literal(let text):
            return Array(text.utf8)
        case .environment(let name):
            guard let value = getenv(name), value.pointee != 0 else {
                throw SystemError("admin token: the environment variable \(name) is not set or empty", errno: ENOENT)
            }
            return Array(String(cString: value).utf8)
        case .file(let path):
            guard let text = ConfigFile.readFile(path) else {
                throw SystemError("admin token: cannot read \(path)", errno: errno)
            }
            let trimmed = text.trimmingSpace
            guard !trimmed.isEmpty else { throw SystemError("admin token: \(path) is empty", errno: EINVAL) }
            return Array(trimmed.utf8)
        }
    }

    // MARK: - Requests

    private func handle(_ request: HTTPRequest, _ responder: HTTPResponder) {
        let parts = request.path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        let changing = [.post, .put, .delete].contains(request.method)
        if changing {
            guard authorized(request, responder), sameOrigin(request, responder) else { return }
        }
        switch (request.method, parts.count, parts.first) {
        case (.get, 0, _), (.head, 0, _):
            send(responder, 200, "text/html; charset=utf-8", page())
        case (.get, 1, "status"), (.head, 1, "status"):
            json(responder, 200, state.statusJSON(uptime: state.base.monotonicMicroseconds - started, configPath: configPath))
        case (.get, 1, "metrics"), (.head, 1, "metrics"):
            guard let metrics else { return notFound(request, responder) }
            send(responder, 200, "text/plain; version=0.0.4; charset=utf-8", metrics())
        case (.post, 1, "reload"):
            reloadNow(request, responder)
        case (_, 5, "pools") where parts[2] == "backends":
            backendRoute(request, responder, pool: parts[1], backend: parts[3], action: parts[4])
        default:
            if ["status", "metrics", "reload", "pools"].contains(parts.first ?? "") || parts.isEmpty {
                methodNotAllowed(request, responder)
            } else {
                notFound(request, responder)
            }
        }
    }

    private func backendRoute(_ request: HTTPRequest, _ responder: HTTPResponder, pool name: String, backend: String,
                              action: String) {
        let located: (pool: Int, slot: Int)
        do throws(LiveState.AdminError) {
            located = try state.locate(pool: name, backend: backend)
        } catch {
            return self.error(responder, 404, error.message, hint: "GET /status lists every pool and backend")
        }
        let (pool, slot) = located
        let who = request.peer
        switch (request.method, action) {
        case (.get, "events"), (.head, "events"):
            json(responder, 200, state.eventsJSON(pool: pool, slot: slot))
        case (.post, "drain"), (.post, "disable"), (.post, "enable"):
            // The verbs are not the state names: `disable` sets `disabled`.
            let wanted: OperatorState = action == "drain" ? .drain : action == "disable" ? .disabled : .enabled
            let generation = state.adminSetState(pool: pool, slot: slot, wanted, by: who)
            answerWhenApplied(responder, generation, pool: pool, slot: slot)
        case (.post, "weight"), (.put, "weight"):
            let body: JSON
            do throws(JSON.ParseError) {
                body = try JSON.parse(request.body)
            } catch {
                return self.error(responder, 400, "the body is not JSON: \(error)", hint: "send {\"weight\": 5}")
            }
            guard case .int(let weight)? = body["weight"], (1...FulcrumConfig.Backend.maxWeight).contains(weight) else {
                return self.error(responder, 400, "expected {\"weight\": N} with N from 1 to \(FulcrumConfig.Backend.maxWeight)",
                                  hint: "to take a backend out of rotation, POST .../drain or .../disable")
            }
            let generation = state.adminSetWeight(pool: pool, slot: slot, weight, by: who)
            answerWhenApplied(responder, generation, pool: pool, slot: slot)
        case (.delete, "override"):
            let key = Self.queryValue(request.query, "key") ?? "all"
            var generation = state.generation
            switch key {
            case "weight": generation = state.adminSetWeight(pool: pool, slot: slot, nil, by: who)
            case "state": generation = state.adminSetState(pool: pool, slot: slot, nil, by: who)
            case "all":
                _ = state.adminSetWeight(pool: pool, slot: slot, nil, by: who)
                generation = state.adminSetState(pool: pool, slot: slot, nil, by: who)
            default:
                return error(responder, 400, "unknown override '\(key)'", hint: "use ?key=weight, ?key=state or no key for both")
            }
            answerWhenApplied(responder, generation, pool: pool, slot: slot)
        case (_, "events"), (_, "drain"), (_, "disable"), (_, "enable"), (_, "weight"), (_, "override"):
            methodNotAllowed(request, responder)
        default:
            notFound(request, responder)
        }
    }

    private func reloadNow(_ request: HTTPRequest, _ responder: HTTPResponder) {
        guard let reload else { return error(responder, 503, "the process is stopping", hint: nil) }
        logger.info("admin: reload requested", metadata: ["peer": "\(request.peer)"])
        switch reload() {
        case .failed(let errors):
            json(responder, 422, .object([
                "ok": .bool(false), "error": .string("the configuration is invalid or cannot be applied; nothing changed"),
                "errors": .array(errors.map(JSON.string)),
            ]))
        case .applied(let generation, let changes, let restart):
            responder.keepForLater()
            state.whenApplied(generation) { [weak self] in
                self?.json(responder, 200, .object([
                    "ok": .bool(true), "generation": .int(generation), "changes": .array(changes.map(JSON.string)),
                    "restart_needed": .array(restart.map(JSON.string)),
                ]))
            }
        }
    }

    /// Answers with the backend's state once every worker has applied `generation`.
    private func answerWhenApplied(_ responder: HTTPResponder, _ generation: Int, pool: Int, slot: Int) {
        responder.keepForLater()
        state.whenApplied(generation) { [weak self] in
            guard let self else { return }
            let backend = self.state.pools[pool].backends[slot]
            self.json(responder, 200, .object([
                "ok": .bool(true), "generation": .int(generation),
                "backend": self.state.backendJSON(pool, backend, monotonic: self.state.base.monotonicMicroseconds,
                                                  wall: WallClock.microseconds),
            ]))
        }
    }

    // MARK: - Security

    private func authorized(_ request: HTTPRequest, _ responder: HTTPResponder) -> Bool {
        guard let token else { return true }
        let header = request.header("authorization") ?? ""
        let prefix = "Bearer "
        let given = header.hasPrefix(prefix) ? Array(header.utf8.dropFirst(prefix.utf8.count)) : []
        if Self.constantTimeEqual(given, token) { return true }
        logger.warning("admin: refused a change without the right token", metadata: [
            "peer": "\(request.peer)", "path": "\(request.path)", "authorization": "\(header.isEmpty ? "missing" : "wrong")",
        ])
        send(responder, 401, "application/json", JSON.object([
            "error": .string("this change needs the admin token"),
            "hint": .string("send Authorization: Bearer <token>"),
        ]).text, headers: [("WWW-Authenticate", "Bearer realm=\"fulcrum\"")])
        return false
    }

    /// Cross-site request forgery: a browser on another site must not be able to post here.
    private func sameOrigin(_ request: HTTPRequest, _ responder: HTTPResponder) -> Bool {
        if let origin = request.header("origin") {
            let host = request.header("host") ?? ""
            if origin == "http://\(host)" { return true }
        } else if request.header("sec-fetch-site").map({ $0 == "same-origin" || $0 == "none" }) ?? true {
            return true
        }
        logger.warning("admin: refused a cross-site change", metadata: [
            "peer": "\(request.peer)", "origin": "\(request.header("origin") ?? "-")",
        ])
        error(responder, 403, "cross-site request refused", hint: "changes come from the admin's own page or a non-browser client")
        return false
    }

    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var difference = UInt8(truncatingIfNeeded: a.count ^ b.count)
        for i in 0..<max(a.count, b.count) {
            difference |= (i < a.count ? a[i] : 0) ^ (i < b.count ? b[i] : 0xFF)
        }
        return difference == 0 && a.count == b.count
    }

    // MARK: - Answers

    private func json(_ responder: HTTPResponder, _ status: Int, _ body: JSON) {
        send(responder, status, "application/json", body.text + "\n")
    }

    private func error(_ responder: HTTPResponder, _ status: Int, _ message: String, hint: String?) {
        json(responder, status, .object(["error": .string(message), "hint": .optional(hint)]))
    }

    private func notFound(_ request: HTTPRequest, _ responder: HTTPResponder) {
        error(responder, 404, "no such path: \(request.path)",
              hint: "GET /status, /metrics, /pools/{pool}/backends/{backend}/events; POST /reload, /pools/{pool}/backends/{backend}/drain|disable|enable|weight; DELETE /pools/{pool}/backends/{backend}/override")
    }

    private func methodNotAllowed(_ request: HTTPRequest, _ responder: HTTPResponder) {
        error(responder, 405, "\(request.method.rawValue) is not allowed on \(request.path)", hint: nil)
    }

    private func send(_ responder: HTTPResponder, _ status: Int, _ type: String, _ body: String,
                      headers: [(String, String)] = []) {
        responder.send(status: status, reason: Self.reason(status), contentType: type,
                       headers: headers + [("X-Content-Type-Options", "nosniff")], body: Array(body.utf8))
    }

    static func reason(_ status: Int) -> String {
        switch status {
        case 200: return "OK"
        case 400: return "Bad Request"
        case 401: return "Unauthorized"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 422: return "Unprocessable Content"
        case 503: return "Service Unavailable"
        default: return "Error"
        }
    }

    static func queryValue(_ query: String, _ key: String) -> String? {
        for pair in query.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            if parts.first.map(String.init) == key { return parts.count > 1 ? String(parts[1]) : "" }
        }
        return nil
    }
}

extension String {
    /// Without leading and trailing spaces, tabs and newlines.
    var trimmingSpace: String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" }
        return String(drop(while: isSpace).reversed().drop(while: isSpace).reversed())
    }
}
