import EventLoop
import FulcrumCore
import Logging

/// Runs the active health checks of every pool that configures them, on the engine's own event loop (never
/// on a worker). Targets follow the pools' live state (`update`): every listed backend of a pool with
/// checks is probed; a removed backend or a retired pool is not, and keeps its last state in case it comes
/// back. Each verdict that changes a backend's state, and each pass, goes to `report`.
final class HealthChecker {
    /// A verdict for the engine: pool, slot, the backend's state, whether the probe passed, why it failed,
    /// and, when the state changed, what happened (`check: connect refused after 3 ms (fall 3/3)`).
    typealias Report = (_ pool: Int, _ slot: Int, _ state: ActiveHealth.State, _ passed: Bool, _ reason: String?,
                        _ change: String?) -> Void

    private let base: EventBase
    private var logger: Logger
    private let report: Report
    private let seed: UInt64
    /// By pool index, then slot.
    private var targets: [[Target?]] = []
    private var started = false
    /// Who waits for a pool's backends to have their first verdicts (`whenChecked`).
    private var checkedWaiters: [(pool: Int, done: () -> Void)] = []
    /// Targets still waiting for their first verdict, and what to call once none is.
    private var awaitingFirstVerdict = 0
    private var firstRoundDone: (() -> Void)?

    final class Target {
        let pool: Int
        let slot: Int
        let address: SocketAddress
        let endpoint: Endpoint
        var poolName: String
        var health: FulcrumConfig.Health
        var state: ActiveHealth
        var schedule: ProbeSchedule
        var timer: Timer?
        /// Probed now (listed, in a pool with checks).
        var probing = false
        /// Counts the times probing stopped: a probe still in flight from before the last stop is ignored.
        var epoch = 0
        var judged = false
        /// Has had a verdict since it was last (re)started.
        var hasVerdict = false
        /// The backend's incarnation (see `LiveBackend.incarnation`) the state belongs to.
        var incarnation = 0

        init(pool: Int, slot: Int, poolName: String, address: SocketAddress, health: FulcrumConfig.Health, seed: UInt64) {
            self.pool = pool
            self.slot = slot
            self.poolName = poolName
            self.address = address
            self.health = health
            endpoint = Endpoint(address)
            state = ActiveHealth(rise: health.rise, fall: health.fall)
            schedule = ProbeSchedule(interval: health.interval, downInterval: health.downInterval, jitter: health.jitter,
                                     random: FastRandom(seed: seed))
        }

        /// New check settings: the state so far carries on, unless `fresh` (checks turned back on, or a
        /// backend that came back as a new incarnation): then it starts unknown.
        func replace(_ health: FulcrumConfig.Health, seed: UInt64, fresh: Bool = false) {
            self.health = health
            state = ActiveHealth(rise: health.rise, fall: health.fall, initial: fresh ? .unknown : state.state)
            schedule = ProbeSchedule(interval: health.interval, downInterval: health.downInterval, jitter: health.jitter,
                                     random: FastRandom(seed: seed))
            if fresh { hasVerdict = false }
        }
    }

    init(base: EventBase, seed: UInt64, logger: Logger, report: @escaping Report) {
        self.base = base
        self.logger = logger
        self.seed = seed
        self.report = report
    }

    var hasTargets: Bool { targets.contains { $0.contains { $0?.probing == true } } }

    private var probing: [Target] { targets.flatMap { $0.compactMap { $0 } }.filter(\.probing) }

    /// How many checked backends are up and down, for the startup log.
    var summary: String {
        let all = probing
        let up = all.filter { $0.state.state == .up }.count
        let down = all.filter { $0.state.state == .down }.count
        let unknown = all.count - up - down
        return "\(up) up, \(down) down" + (unknown > 0 ? ", \(unknown) not checked yet" : "")
    }

    /// Brings the pool's targets in line with its live state. A target that starts probing after `start`
    /// is probed at once.
    func update(_ pool: LivePool) {
        while targets.count <= pool.index { targets.append([]) }
        let health = pool.retired ? nil : pool.settings.resilience.health
        for backend in pool.backends {
            let slot = backend.slot
            while targets[pool.index].count <= slot { targets[pool.index].append(nil) }
            let existing = targets[pool.index][slot]
            guard let health, backend.listed else {
                if let existing, existing.probing { stopProbing(existing) }
                // With the pool's checks off, what they said no longer holds: turned back on, they start
                // over. A removed backend keeps its state, in case it is listed again while it drains.
                if health == nil, let existing { existing.replace(existing.health, seed: targetSeed(pool, slot), fresh: true) }
                continue
            }
            let target: Target
            if let existing {
                target = existing
                target.poolName = pool.name
                let fresh = target.incarnation != backend.incarnation
                if fresh || target.health != health { target.replace(health, seed: targetSeed(pool, slot), fresh: fresh) }
                target.incarnation = backend.incarnation
            } else {
                target = Target(pool: pool.index, slot: slot, poolName: pool.name, address: backend.id.address,
                                health: health, seed: targetSeed(pool, slot))
                target.incarnation = backend.incarnation
                targets[pool.index][slot] = target
                // Only the targets known at start hold the first round back.
                target.judged = started
            }
            guard !target.probing else { continue }
            target.probing = true
            if started { startProbing(target) }
        }
    }

    private func targetSeed(_ pool: LivePool, _ slot: Int) -> UInt64 {
        StableHash.mix(seed &+ UInt64(pool.index << 20 | slot))
    }

    /// Calls `done` once every backend of the pool that is probed has had a verdict since it started
    /// (at once if none is waiting for one).
    func whenChecked(pool: Int, _ done: @escaping () -> Void) {
        let waiting = pool < targets.count && targets[pool].contains { $0?.probing == true && $0?.hasVerdict == false }
        if waiting { checkedWaiters.append((pool, done)) } else { done() }
    }

    /// Probes every target now, then on its schedule. `firstRoundDone` is called once every target has
    /// its first verdict; each probe is bounded by its check's timeout, so that takes at most the longest
    /// timeout.
    func start(firstRoundDone: @escaping () -> Void = {}) {
        started = true
        let all = probing
        awaitingFirstVerdict = all.filter { !$0.judged }.count
        self.firstRoundDone = firstRoundDone
        for target in all { startProbing(target) }
    }

    func stop() {
        firstRoundDone = nil
        for target in probing { stopProbing(target) }
    }

    private func startProbing(_ target: Target) {
        target.timer = Timer(base: base) { [unowned self, unowned target] in self.probe(target) }
        probe(target)
    }

    private func stopProbing(_ target: Target) {
        target.probing = false
        target.epoch += 1
        target.timer?.cancel()
        target.timer = nil
    }

    private func probe(_ target: Target) {
        let epoch = target.epoch
        Self.probe(base: base, address: target.address, endpoint: target.endpoint, health: target.health) {
            [weak self, weak target] verdict, took in
            guard let self, let target, target.timer != nil, target.epoch == epoch else { return }
            self.record(target, verdict, took: took)
        }
    }

    /// Runs one probe of a backend with its check, on `base`; `completion` gets the verdict and how long it
    /// took, in microseconds. The proxy's checks and `fulcrum register` run the same code.
    static func probe(base: EventBase, address: SocketAddress, endpoint: Endpoint, health: FulcrumConfig.Health,
                      completion: @escaping (Probe.Verdict, _ took: Int64) -> Void) {
        let (send, expectsReply, judge) = plan(health.check, host: "\(address)")
        let started = base.monotonicMicroseconds
        Probe.start(base: base, endpoint: endpoint, timeoutMicroseconds: health.timeout.inMicroseconds,
                    send: send, expectsReply: expectsReply, judge: judge) { verdict in
            completion(verdict, base.monotonicMicroseconds - started)
        }
    }

    private func record(_ target: Target, _ verdict: Probe.Verdict, took: Int64) {
        if case .inconclusive(let why) = verdict {
            // The proxy's own resources ran out: the backend's state stays as it was.
            logger.warning("active check could not run: out of a local resource; the backend's state is unchanged", metadata: [
                "pool": "\(target.poolName)", "backend": "\(target.address)", "reason": "\(why)",
            ])
            target.timer?.schedule(after: target.schedule.nextDelay(for: target.state.state))
            return
        }
        let success = verdict == .pass
        var reason: String?
        if case .fail(let why) = verdict { reason = why }
        let before = target.state.state
        let change = target.state.record(success: success, error: reason)
        var detail: String?
        if let change {
            detail = Self.describe(change, from: before, health: target.state, check: target.health.check, reason: reason, took: took)
            let metadata: Logger.Metadata = [
                "pool": "\(target.poolName)", "backend": "\(target.address)", "check": "\(Self.name(target.health.check))",
            ]
            if change == .up {
                logger.notice("backend up: active check passed", metadata: metadata)
            } else {
                logger.warning("backend down: active check failed", metadata: metadata.merging(["reason": "\(reason ?? "")"]) { $1 })
            }
        }
        if change != nil || success {
            report(target.pool, target.slot, target.state.state, success, reason, detail)
        }
        target.timer?.schedule(after: target.schedule.nextDelay(for: target.state.state))
        if !target.hasVerdict {
            target.hasVerdict = true
            if checkedWaiters.contains(where: { $0.pool == target.pool }) {
                let pool = target.pool
                whenAllChecked(pool)
            }
        }
        if !target.judged {
            target.judged = true
            awaitingFirstVerdict -= 1
            if awaitingFirstVerdict == 0, let done = firstRoundDone {
                firstRoundDone = nil
                done()
            }
        }
    }

    private func whenAllChecked(_ pool: Int) {
        guard !targets[pool].contains(where: { $0?.probing == true && $0?.hasVerdict == false }) else { return }
        let ready = checkedWaiters.filter { $0.pool == pool }
        checkedWaiters.removeAll { $0.pool == pool }
        for waiter in ready { waiter.done() }
    }

    /// What a change of state means, for logs and status: `check tcp passed in 2ms (rise 2 in a row)`,
    /// `check tcp failed: connection refused after 1ms (fall 3 in a row)`.
    static func describe(_ change: ActiveHealth.State, from before: ActiveHealth.State, health: ActiveHealth,
                         check: FulcrumConfig.Health.Check, reason: String?, took: Int64) -> String {
        let elapsed = Duration.microseconds(took).configText
        // From unknown one probe decides; otherwise rise (or fall) probes in a row did.
        let count = before == .unknown ? "first check"
            : change == .up ? "rise \(health.rise) in a row" : "fall \(health.fall) in a row"
        return change == .up
            ? "check \(name(check)) passed in \(elapsed) (\(count))"
            : "check \(name(check)) failed: \(reason ?? "") after \(elapsed) (\(count))"
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
