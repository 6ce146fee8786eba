import EventLoop
import FulcrumCore
import Logging

/// Runs the active health checks of every pool that configures them, on the engine's own event loop (never
/// on a worker). Results go to the pools' `SharedHealth`, and workers are told to read them.
final class HealthChecker {
    private let base: EventBase
    private var logger: Logger
    private let workers: [WakeupSender]
    private var targets: [Target] = []
    /// Targets still waiting for their first verdict, and what to call once none is.
    private var awaitingFirstVerdict = 0
    private var firstRoundDone: (() -> Void)?

    final class Target {
        let pool: FulcrumConfig.Pool
        let backend: Int
        let endpoint: Endpoint
        let health: FulcrumConfig.Health
        let shared: SharedHealth
        var state: ActiveHealth
        var schedule: ProbeSchedule
        var timer: Timer?
        var judged = false

        init(pool: FulcrumConfig.Pool, backend: Int, health: FulcrumConfig.Health, shared: SharedHealth, seed: UInt64) {
            self.pool = pool
            self.backend = backend
            self.health = health
            self.shared = shared
            endpoint = Endpoint(pool.backends[backend].address)
            state = ActiveHealth(rise: health.rise, fall: health.fall)
            schedule = ProbeSchedule(interval: health.interval, downInterval: health.downInterval, jitter: health.jitter,
                                     random: FastRandom(seed: seed))
        }
    }

    init(base: EventBase, config: FulcrumConfig, shared: [SharedHealth?], workers: [WakeupSender], seed: UInt64,
         logger: Logger) {
        self.base = base
        self.logger = logger
        self.workers = workers
        for (p, pool) in config.pools.enumerated() {
            guard let health = pool.resilience.health, let sharedHealth = shared[p] else { continue }
            for b in pool.backends.indices {
                targets.append(Target(pool: pool, backend: b, health: health, shared: sharedHealth,
                                      seed: StableHash.mix(seed &+ UInt64(p << 20 | b))))
            }
        }
    }

    var hasTargets: Bool { !targets.isEmpty }

    /// How many checked backends are up and down, for the startup log.
    var summary: String {
        let up = targets.filter { $0.state.state == .up }.count
        let down = targets.filter { $0.state.state == .down }.count
        let unknown = targets.count - up - down
        return "\(up) up, \(down) down" + (unknown > 0 ? ", \(unknown) not checked yet" : "")
    }

    /// Probes every backend now, then on its schedule. `firstRoundDone` is called once every backend has
    /// its first verdict; each probe is bounded by its check's timeout, so that takes at most the longest
    /// timeout.
    func start(firstRoundDone: @escaping () -> Void = {}) {
        awaitingFirstVerdict = targets.count
        self.firstRoundDone = firstRoundDone
        for target in targets {
            target.timer = Timer(base: base) { [unowned self, unowned target] in self.probe(target) }
            probe(target)
        }
    }

    func stop() {
        firstRoundDone = nil
        for target in targets {
            target.timer?.cancel()
            target.timer = nil
        }
    }

    private func probe(_ target: Target) {
        let (send, expectsReply, judge) = Self.plan(target.health.check, host: "\(target.pool.backends[target.backend].address)")
        Probe.start(base: base, endpoint: target.endpoint, timeoutMicroseconds: target.health.timeout.inMicroseconds,
                    send: send, expectsReply: expectsReply, judge: judge) { [weak self, weak target] verdict in
            guard let self, let target, target.timer != nil else { return }
            self.record(target, verdict)
        }
    }

    private func record(_ target: Target, _ verdict: Probe.Verdict) {
        if case .inconclusive(let why) = verdict {
            // The proxy's own resources ran out: the backend's state stays as it was.
            logger.warning("active check could not run: out of a local resource; the backend's state is unchanged", metadata: [
                "pool": "\(target.pool.name)", "backend": "\(target.pool.backends[target.backend].address)", "reason": "\(why)",
            ])
            target.timer?.schedule(after: target.schedule.nextDelay(for: target.state.state))
            return
        }
        let success = verdict == .pass
        var reason: String?
        if case .fail(let why) = verdict { reason = why }
        let change = target.state.record(success: success, error: reason)
        if success { target.shared.recordSuccess(target.backend) }
        if let change {
            target.shared.setState(target.backend, change)
            let metadata: Logger.Metadata = [
                "pool": "\(target.pool.name)", "backend": "\(target.pool.backends[target.backend].address)",
                "check": "\(Self.name(target.health.check))",
            ]
            if change == .up {
                logger.notice("backend up: active check passed", metadata: metadata)
            } else {
                logger.warning("backend down: active check failed", metadata: metadata.merging(["reason": "\(reason ?? "")"]) { $1 })
            }
        }
        if change != nil || success {
            for worker in workers { worker.send(WorkerCommand.health.rawValue) }
        }
        target.timer?.schedule(after: target.schedule.nextDelay(for: target.state.state))
        if !target.judged {
            target.judged = true
            awaitingFirstVerdict -= 1
            if awaitingFirstVerdict == 0, let done = firstRoundDone {
                firstRoundDone = nil
                done()
            }
        }
    }

    static func name(_ check: FulcrumConfig.Health.Check) -> String {
        switch check {
        case .tcp: return "tcp"
        case .sendExpect: return "send_expect"
        case .http: return "http"
        }
    }

    /// What to send, whether to wait for a reply, and how to judge it (the reply so far, and whether it is
    /// complete: then the answer must be pass or fail).
    static func plan(_ check: FulcrumConfig.Health.Check, host: String)
        -> ([UInt8], Bool, ([UInt8], Bool) -> Probe.Verdict) {
        switch check {
        case .tcp:
            return ([], false, { _, _ in .pass })
        case .sendExpect(let send, .prefix(let prefix)):
            return (send, true, { reply, complete in
                if reply.count < prefix.count {
                    let partial = reply == Array(prefix.prefix(reply.count))
                    return partial && !complete ? .needMore : .fail("unexpected reply \(Self.show(reply))")
                }
                return reply.starts(with: prefix) ? .pass : .fail("unexpected reply \(Self.show(reply))")
            })
        case .sendExpect(let send, .regex(let pattern)):
            let regex = try? Regex(pattern)
            return (send, true, { reply, complete in
                let text = String(decoding: reply, as: UTF8.self)
                if let regex, (try? regex.firstMatch(in: text)) != nil { return .pass }
                return complete ? .fail("reply \(Self.show(reply)) does not match expect_regex") : .needMore
            })
        case .http(let path, let hostHeader, let statuses):
            let request = "GET \(path) HTTP/1.0\r\nHost: \(hostHeader ?? host)\r\nUser-Agent: fulcrum-health\r\nConnection: close\r\n\r\n"
            return (Array(request.utf8), true, { reply, complete in
                guard let end = reply.firstIndex(of: 10) else {
                    return complete ? .fail("not an HTTP status line: \(Self.show(reply))") : .needMore
                }
                let line = String(decoding: reply[..<end], as: UTF8.self)
                let parts = line.split(separator: " ")
                guard parts.count >= 2, parts[0].hasPrefix("HTTP/"), let code = Int(parts[1]) else {
                    return .fail("not an HTTP status line: \(Self.show(Array(reply[..<end])))")
                }
                return statuses.contains { $0.contains(code) } ? .pass : .fail("HTTP status \(code)")
            })
        }
    }

    /// Up to 64 bytes of a reply, quoted, with control bytes escaped, for logs.
    static func show(_ bytes: [UInt8]) -> String {
        var text = "\""
        for byte in bytes.prefix(64) {
            switch byte {
            case 13: text += "\\r"
            case 10: text += "\\n"
            case 32..<127: text.append(Character(Unicode.Scalar(byte)))
            default: text += "\\x" + (byte < 16 ? "0" : "") + String(byte, radix: 16)
            }
        }
        return text + "\""
    }
}
