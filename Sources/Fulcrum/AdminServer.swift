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
    private var lastRefusalLog: Int64 = .min / 2
    private var suppressedRefusals = 0
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
        guard hostAllowed(request) else {
            refused("admin: refused a request for another host name (DNS rebinding?)", request)
            return error(responder, 421, "this admin API answers to its loopback address only, not to Host \(request.header("host") ?? "")",
                         hint: "use http://\(server?.endpoint.description ?? "127.0.0.1:9901")/; a reverse proxy must pass that Host")
        }
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
            send(responder, 200, PrometheusText.contentType, metrics())
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
            let target: OperatorState = action == "drain" ? .drain : action == "disable" ? .disabled : .enabled
            let generation = state.adminSetState(pool: pool, slot: slot, target, by: who)
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
        refused("admin: refused a change without the right token (\(header.isEmpty ? "none" : "wrong"))", request)
        send(responder, 401, "application/json", JSON.object([
            "error": .string("this change needs the admin token"),
            "hint": .string("send Authorization: Bearer <token>"),
        ]).text, headers: [("WWW-Authenticate", "Bearer realm=\"fulcrum\"")])
        return false
    }

    /// Cross-site request forgery: a browser on another site must not be able to post here. A request
    /// that carries an `Origin` must come from the host it is sent to (any scheme: a TLS reverse proxy in
    /// front is fine); one a browser marks cross-site is refused. Clients that are not browsers send neither.
    private func sameOrigin(_ request: HTTPRequest, _ responder: HTTPResponder) -> Bool {
        if let origin = request.header("origin") {
            let host = request.header("host") ?? ""
            let originHost = origin.split(separator: "/", omittingEmptySubsequences: true).dropFirst().first.map(String.init)
            if originHost == host && (origin.hasPrefix("http://") || origin.hasPrefix("https://")) { return true }
        } else if request.header("sec-fetch-site").map({ $0 == "same-origin" || $0 == "none" }) ?? true {
            return true
        }
        refused("admin: refused a cross-site change (origin \(request.header("origin") ?? "-"))", request)
        error(responder, 403, "cross-site request refused", hint: "changes come from the admin's own page or a non-browser client")
        return false
    }

    /// With the admin on a loopback address, a browser may only reach it under a loopback name: a page
    /// elsewhere whose name an attacker points at 127.0.0.1 (DNS rebinding) is refused, reads included.
    private func hostAllowed(_ request: HTTPRequest) -> Bool {
        guard settings.isLoopback, let host = request.header("host") else { return true }
        var name = host
        if name.hasPrefix("[") {
            name = String(name.prefix { $0 != "]" }.dropFirst())
        } else if let colon = name.lastIndex(of: ":") {
            name = String(name[..<colon])
        }
        return name == "localhost" || name == "::1" || name.hasPrefix("127.") && name.split(separator: ".").count == 4
    }

    /// A refused request, logged at most once a second (the rest are counted), so that a flood of them
    /// cannot flood the log.
    private func refused(_ what: String, _ request: HTTPRequest) {
        let now = state.base.monotonicMicroseconds
        guard now - lastRefusalLog >= 1_000_000 else {
            suppressedRefusals += 1
            return
        }
        logger.warning("\(what)", metadata: [
            "peer": "\(request.peer)", "path": "\(request.path)", "not_logged_since_last": "\(suppressedRefusals)",
        ])
        lastRefusalLog = now
        suppressedRefusals = 0
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
        // Never framed by another page (clickjacking the status page's buttons).
        responder.send(status: status, reason: Self.reason(status), contentType: type,
                       headers: headers + [("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
                                           ("Content-Security-Policy", "frame-ancestors 'none'")],
                       body: Array(body.utf8))
    }

    static func reason(_ status: Int) -> String {
        switch status {
        case 200: return "OK"
        case 400: return "Bad Request"
        case 401: return "Unauthorized"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 421: return "Misdirected Request"
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
