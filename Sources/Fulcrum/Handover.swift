import EventLoop
import FulcrumCore
import Glibc
import Logging

/// Binary upgrade: a new process takes over the listening sockets of a running one over a Unix socket,
/// as HAProxy's `-x` and Envoy's hot restart do. Closing a SO_REUSEPORT socket resets the connections
/// waiting in its accept queue, and binding a new group beside the old one splits new connections between
/// the two: so the sockets themselves change hands, and no listening socket is ever closed while clients
/// wait in it.
///
/// ```text
///   new process                                   old process (upgrade_socket: PATH, serving)
///   connect PATH ───── takeover 1 <pid> ────────▶ one takeover at a time
///                ◀──── listeners + every fd ──── for each listener: name, configured address,
///                                                bound endpoint, its per-worker sockets (SCM_RIGHTS)
///   adopt the sockets of every listener whose name and address match, bind the others;
///   start workers, "fulcrum ready", MAINPID= READY=1 to the service manager
///                ───── ready <pid> ─────────────▶ removes PATH, stops the upgrade socket
///                ◀──── draining ──────────────── drains exactly as on the first SIGTERM, exits 0
///   serve PATH itself
/// ```
///
/// A new process that fails or disconnects before `ready` changes nothing in the old one. `fulcrum
/// upgrade` asks the old process to start the new binary itself (`spawn`), so that under a service
/// manager the new process belongs to the service (its cgroup) and may become its main process.
public enum Handover {
    static let version = "1"
    /// How long either side waits for the other's next message mid-exchange.
    static let exchangeTimeout: Int64 = 10_000_000
    /// The old process reads a peer's message on its main loop: a peer that stalls mid-message holds the
    /// loop this long at most (messages are a few hundred bytes, written at once).
    static let serverTimeout: Int64 = 1_000_000
    /// How long a new process that has received the listening sockets has to say `ready`, and a binary
    /// started by `fulcrum upgrade` to ask for them: past it, the old process drops it as it drops one that
    /// went away (nothing changed, still serving), so that a stuck new process never blocks the next
    /// upgrade. Long enough for a first round of active checks and a slow start-up.
    static let readyDeadline: Int64 = testTimeout ?? 60_000_000
    /// How long a peer of the upgrade socket has to send its request once connected.
    static let requestTimeout: Int64 = testTimeout ?? 10_000_000
    /// The most peers connected to the upgrade socket at once; more are refused.
    static let maxPeers = 8
    /// `FULCRUM_TEST_UPGRADE_TIMEOUT_MS`, read once: tests set both limits above to that many
    /// milliseconds rather than wait a minute.
    private static let testTimeout: Int64? = getenv("FULCRUM_TEST_UPGRADE_TIMEOUT_MS")
        .flatMap { Int64(String(cString: $0)) }.map { max(1, $0) * 1000 }

    /// The listening sockets a worker accepts on, for each listener: every `workers`-th socket starting
    /// at its own index. Normally one each; after a takeover from a process that had more workers, some
    /// take two or more, so that no socket of the group is left without anyone accepting from its queue.
    static func share(_ sockets: [Int32], worker: Int, workers: Int) -> [Int32] {
        stride(from: worker, to: sockets.count, by: workers).map { sockets[$0] }
    }

    // MARK: - Messages

    /// A message's fields, each as a length (UInt32, big-endian) and UTF-8 bytes; the first is the verb.
    static func encode(_ fields: [String]) -> [UInt8] {
        var bytes: [UInt8] = []
        for field in fields {
            let utf8 = Array(field.utf8)
            withUnsafeBytes(of: UInt32(utf8.count).bigEndian) { bytes += $0 }
            bytes += utf8
        }
        return bytes
    }

    static func decode(_ bytes: [UInt8]) -> [String]? {
        var fields: [String] = []
        var offset = 0
        while offset < bytes.count {
            guard offset + 4 <= bytes.count else { return nil }
            let length = bytes[offset..<offset + 4].reduce(0) { $0 << 8 | Int($1) }
            offset += 4
            guard offset + length <= bytes.count else { return nil }
            fields.append(String(decoding: bytes[offset..<offset + length], as: UTF8.self))
            offset += length
        }
        return fields.isEmpty ? nil : fields
    }

    static func send(_ fd: Int32, _ fields: [String], descriptors: [Int32] = []) throws(SystemError) {
        try UnixSocket.send(fd, payload: encode(fields), descriptors: descriptors)
    }

    /// Sends a request and returns the answer (nil when the peer closed the connection without one). A
    /// process that refuses a connection says why and closes it at once, which can fail the send: the
    /// reason is read all the same.
    static func ask(_ fd: Int32, _ fields: [String]) throws(SystemError) -> (fields: [String], descriptors: [Int32])? {
        do throws(SystemError) {
            try send(fd, fields)
        } catch {
            guard error.errno == EPIPE || error.errno == ECONNRESET,
                  let answer = try? receive(fd), answer.fields.first == "error" else { throw error }
            return answer
        }
        return try receive(fd)
    }

    /// The next message's fields and descriptors; nil when the peer closed the connection.
    static func receive(_ fd: Int32) throws(SystemError) -> (fields: [String], descriptors: [Int32])? {
        guard let message = try UnixSocket.receive(fd, maxPayload: 1 << 20) else { return nil }
        guard let fields = decode(message.payload) else {
            for descriptor in message.descriptors { Socket.close(descriptor) }
            throw SystemError("handover: a malformed message", errno: EPROTO)
        }
        return (fields, message.descriptors)
    }

    // MARK: - Binding

    /// `count` listening sockets for `listener`. With `joining`, they join the SO_REUSEPORT group already
    /// bound to that endpoint (an inherited one); without, the first claims the address as a fresh start
    /// does (and fails if anyone holds it), and port 0 is resolved by it.
    static func bind(_ listener: FulcrumConfig.Listener, count: Int, joining: Endpoint?) throws(SystemError) -> [Int32] {
        var endpoint = joining ?? Endpoint(listener.address)
        var fds: [Int32] = []
        do throws(SystemError) {
            for index in 0..<count {
                let fd = try Socket.listen(endpoint, reusePort: true, claim: joining == nil && index == 0,
                                           backlog: Int32(listener.backlog), deferAcceptSeconds: listener.deferAcceptSeconds)
                fds.append(fd)
                if endpoint.port == 0 { endpoint = try Socket.localEndpoint(fd) }
            }
        } catch {
            for fd in fds { Socket.close(fd) }
            throw error
        }
        return fds
    }
}

// MARK: - New process

/// The new process's side: connects to the old process before binding anything, receives its listening
/// sockets, adopts them, and says `ready` once its own workers run.
public final class Takeover {
    struct Inherited {
        let name: String
        let address: String
        let bound: String
        var descriptors: [Int32]

        /// Whether these sockets are where `listener` asks, by the rule a reload keeps sockets by: the same
        /// configured address, or the address they are bound to (a port 0 the kernel chose, written out).
        func serves(_ listener: FulcrumConfig.Listener) -> Bool {
            address == "\(listener.address)" || bound == "\(listener.address)"
        }
    }

    public let path: String
    private var fd: Int32
    private var inherited: [Inherited]
    private let logger: Logger

    /// Connects to the upgrade socket at `path` and receives every listening socket of the old process.
    public init(path: String, logger: Logger) throws(SystemError) {
        self.path = path
        self.logger = logger
        do throws(SystemError) {
            fd = try UnixSocket.connect(path: path, timeoutMicroseconds: Handover.exchangeTimeout)
        } catch {
            throw SystemError("cannot take over from \(path): connect", errno: error.errno)
        }
        do throws(SystemError) {
            guard let reply = try Handover.ask(fd, ["takeover", Handover.version, "\(getpid())"]) else {
                throw SystemError("handover from \(path): the old process closed the connection", errno: ECONNRESET)
            }
            inherited = try Takeover.parse(reply.fields, reply.descriptors, path: path)
        } catch {
            Socket.close(fd)
            throw error
        }
    }

    deinit {
        if fd >= 0 { Socket.close(fd) }
        for listener in inherited { for descriptor in listener.descriptors { Socket.close(descriptor) } }
    }

    /// Checks the old process's answer and pairs its descriptors with its listeners; closes them all if
    /// anything is wrong.
    static func parse(_ fields: [String], _ descriptors: [Int32], path: String) throws(SystemError) -> [Inherited] {
        func fail(_ text: String, _ code: Int32 = EPROTO) -> SystemError {
            for descriptor in descriptors { Socket.close(descriptor) }
            return SystemError("handover from \(path): \(text)", errno: code)
        }
        if fields.first == "error" { throw fail("the old process refused: \(fields.dropFirst().joined(separator: " "))", EBUSY) }
        guard fields.first == "listeners", fields.count >= 2, fields[1] == Handover.version,
              (fields.count - 2) % 4 == 0 else {
            throw fail("an unexpected answer '\(fields.first ?? "")' (a fulcrum of another version?)")
        }
        var result: [Inherited] = []
        var next = 0
        var index = 2
        while index < fields.count {
            guard let count = Int(fields[index + 3]), count >= 0, next + count <= descriptors.count else {
                throw fail("the answer names more sockets than it carries")
            }
            result.append(Inherited(name: fields[index], address: fields[index + 1], bound: fields[index + 2],
                                    descriptors: Array(descriptors[next..<next + count])))
            next += count
            index += 4
        }
        guard next == descriptors.count else { throw fail("the answer carries sockets it does not name") }
        return result
    }

    /// The listening sockets of every listener of `config`, `workers` or more each (per listener, in
    /// worker order: see `Handover.share`): the inherited ones where the old process had a listener of
    /// the same name on the same address (see `Inherited.serves`), with this file's `backlog`, plus new
    /// SO_REUSEPORT sockets joining them when this process has more workers; freshly bound ones for the
    /// other listeners. Inherited sockets no listener uses are closed (the old process still holds them
    /// until it stops accepting).
    func listeners(_ config: FulcrumConfig, workers: Int) throws(SystemError) -> [[Int32]] {
        var all: [[Int32]] = []
        var used = Set<Int>()
        do throws(SystemError) {
            for listener in config.listeners {
                let match = inherited.firstIndex { $0.name == listener.name && $0.serves(listener) }
                var fds: [Int32] = []
                var taken = 0
                if let match, !inherited[match].descriptors.isEmpty {
                    used.insert(match)
                    fds = inherited[match].descriptors
                    taken = fds.count
                    inherited[match].descriptors = []
                    for fd in fds {
                        do throws(SystemError) {
                            try Socket.setBacklog(fd, Int32(listener.backlog))
                        } catch {
                            logger.warning("could not apply backlog to an inherited socket; it keeps the old one", metadata: [
                                "listener": "\(listener.name)", "backlog": "\(listener.backlog)", "error": "\(error)",
                            ])
                        }
                    }
                    // With more workers than inherited sockets, the extra ones are bound just before the
                    // workers start (`LiveState.joinExtraSockets`), not now.
                } else {
                    fds = try Handover.bind(listener, count: workers, joining: nil)
                }
                all.append(fds)
                let endpoint = (try? Socket.localEndpoint(fds[0])).map { "\($0)" } ?? "\(listener.address)"
                let pool = config.pool(named: listener.pool)!
                logger.info("listening on \(endpoint)", metadata: [
                    "listener": "\(listener.name)", "pool": "\(pool.name)", "backends": "\(pool.backends.count)",
                    "balance": "\(pool.balance.name)",
                    "inherited_sockets": "\(taken)", "new_sockets": "\(fds.count - taken)",
                ])
            }
        } catch {
            for fds in all { for fd in fds { Socket.close(fd) } }
            throw error
        }
        for (index, listener) in inherited.enumerated() where !used.contains(index) && !listener.descriptors.isEmpty {
            logger.info("not taking over a listener the configuration no longer has", metadata: [
                "listener": "\(listener.name)", "address": "\(listener.address)", "bound": "\(listener.bound)",
            ])
            for descriptor in listener.descriptors { Socket.close(descriptor) }
            inherited[index].descriptors = []
        }
        return all
    }

    /// Tells the old process that this one's workers accept on every listener: it removes the upgrade
    /// socket's file and starts draining. Waits for its answer (bounded) so that this process's own
    /// upgrade socket, created next at the same path, is never removed by the old one.
    func finish() {
        do throws(SystemError) {
            try Handover.send(fd, ["ready", "\(getpid())"])
            let answer = try Handover.receive(fd)
            if answer?.fields.first == "draining" {
                logger.info("took over every listening socket; the old process drains", metadata: ["from": "\(path)"])
            } else {
                logger.warning("the old process did not confirm the takeover; it may still be serving", metadata: [
                    "from": "\(path)", "answer": "\(answer?.fields.first ?? "connection closed")",
                ])
            }
        } catch {
            logger.warning("could not confirm the takeover to the old process; it may still be serving", metadata: [
                "from": "\(path)", "error": "\(error)",
            ])
        }
        Socket.close(fd)
        fd = -1
    }
}

// MARK: - Engine hook

extension Handover {
    /// Called once the workers run: after a takeover, tells the service manager the new main process and
    /// then the old process that it may drain; then serves `upgrade_socket` for the next upgrade. A
    /// socket that cannot be served is logged, not fatal: the process serves its clients regardless.
    static func serving(config: FulcrumConfig, takeover: Takeover?, base: EventBase,
                        sockets: @escaping () -> [(FulcrumConfig.Listener, [Int32])], logger: Logger,
                        onTakenOver: @escaping () -> Void) -> HandoverServer? {
        ServiceNotify.ready(takeover: takeover != nil, logger: logger)
        takeover?.finish()
        guard let path = config.upgradeSocket else { return nil }
        do throws(SystemError) {
            return try HandoverServer(base: base, path: path, sockets: sockets, logger: logger, onTakenOver: onTakenOver)
        } catch {
            logger.error("upgrade_socket: cannot serve it; binary upgrades are off until a restart", metadata: [
                "path": "\(path)", "error": "\(error)",
            ])
            return nil
        }
    }
}
