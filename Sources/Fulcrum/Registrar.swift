import EventLoop
import FulcrumCore
import Glibc
import Logging

/// The engine of `fulcrum register`: checks one backend with the proxy's own check code (the same probe,
/// judge and rise/fall as `HealthChecker`), and keeps its key in etcd under a lease only while the check
/// passes:
///
///     check up ──▶ grant a lease (TTL) ──▶ put the record under it ──▶ keepalive every TTL/3
///     check down ─▶ revoke the lease: the key is gone at once; checking goes on
///     keepalive answers TTL 0 (the lease expired, or etcd lost it) ──▶ grant and put again
///     every third keepalive (about once per TTL) ──▶ read the key (keys only): deleted, or not under
///                          our lease ──▶ put it again under the current lease
///     etcd unreachable ──▶ retry with backoff, next endpoint; the check goes on; a key whose lease
///                          cannot be renewed expires with it
///     stop ──▶ put the record with state drain (same lease) ──▶ wait drainWait ──▶ delete, revoke
///
/// A sidecar that dies leaves its key until the lease expires: at most TTL after its last keepalive.
/// Everything runs on one event loop; one etcd request is in flight at a time.
public final class Registrar {
    private enum Phase { case idle, running, draining, stopping, stopped }

    private let base: EventBase
    private let registration: Registration
    private var logger: Logger
    private var phase = Phase.idle
    private var done: (() -> Void)?

    // The check.
    private let endpoint: Endpoint
    private var health: ActiveHealth
    private var schedule: ProbeSchedule
    private var probeTimer: Timer?
    private var probing = false

    // etcd.
    private var endpointIndex = 0
    private var client: HTTPClient?
    private var call: HTTPCall?
    private var lease: Etcd.Lease?
    /// The state the key holds under the current lease; nil when the key is not (known to be) there.
    private var written: OperatorState?
    private var keepaliveDue = false
    /// Keepalives answered since the key was last put or verified; every third one verifies the key.
    private var keepalivesSinceVerify = 0
    private var verifyDue = false
    /// What happened to the key when it was found deleted (or under another lease): the next put says so.
    private var restoring: String?
    private var keepaliveTimer: Timer?
    private var retryTimer: Timer?
    private var drainTimer: Timer?
    private var giveUpTimer: Timer?
    private var failures = 0
    /// A failed request waits for its retry: nothing is sent before.
    private var retrying = false
    /// The failure logged, until etcd answers again.
    private var unreachable: String?

    public init(base: EventBase, registration: Registration, logger: Logger) {
        self.base = base
        self.registration = registration
        self.logger = logger
        endpoint = Endpoint(registration.backend.address)
        let check = registration.health
        health = ActiveHealth(rise: check.rise, fall: check.fall)
        let seed = UInt64(UInt32(bitPattern: getpid())) << 32 ^ UInt64(bitPattern: WallClock.microseconds)
        schedule = ProbeSchedule(interval: check.interval, downInterval: check.downInterval, jitter: check.jitter,
                                 random: FastRandom(seed: seed))
        probeTimer = Timer(base: base) { [weak self] in self?.probe() }
        keepaliveTimer = Timer(base: base) { [weak self] in self?.keepaliveTick() }
        retryTimer = Timer(base: base) { [weak self] in
            self?.retrying = false
            self?.advance()
        }
        drainTimer = Timer(base: base) { [weak self] in self?.drained() }
        giveUpTimer = Timer(base: base) { [weak self] in self?.giveUp() }
    }

    /// Runs a registrar on its own loop until SIGTERM or SIGINT has made it leave etcd; returns the exit
    /// status: 0. A second signal exits at once with 1 (the key then goes when its lease expires).
    public static func run(_ registration: Registration, logger: Logger) -> Int32 {
        SignalWatcher.block([SIGTERM, SIGINT])
        Socket.ignoreSIGPIPE()
        let base = EventBase()
        let registrar = Registrar(base: base, registration: registration, logger: logger)
        var status: Int32 = 0
        var stopping = false
        let watchers = [SIGTERM, SIGINT].map { signal in
            SignalWatcher(base: base, signal: signal) { number in
                guard !stopping else {
                    logger.warning("second signal: exiting now; \(registration.key) goes when its lease expires, within \(registration.ttl.configText)")
                    status = 1
                    return base.exit()
                }
                stopping = true
                logger.notice("signal \(number == SIGTERM ? "SIGTERM" : "SIGINT"): leaving etcd")
                registrar.stop { base.exit() }
            }
        }
        registrar.start()
        base.run()
        withExtendedLifetime(watchers) {}
        return status
    }

    /// Each etcd request may take this long: at most a keepalive interval, so a slow answer never makes
    /// the lease lapse unnoticed.
    private var requestTimeout: Duration { max(.milliseconds(500), min(.seconds(2), registration.keepaliveInterval)) }
    private var url: String { "http://\(registration.endpoints[endpointIndex])" }
    private var key: String { registration.key }
    private var ttl: String { registration.ttl.configText }

    /// Checks the backend now, then every interval.
    public func start() {
        guard phase == .idle else { return }
        phase = .running
        logger.info("checking \(registration.backend.address) with check \(HealthChecker.name(registration.health.check)) every \(registration.health.interval.configText); registering it as \(key) in etcd at \(registration.endpoints.map { "http://\($0)" }.joined(separator: ", ")) while it passes")
        probe()
    }

    /// Leaves etcd: the key says `drain` for `drainWait`, then it is deleted and the lease revoked;
    /// `done` is called then (or after `drainWait` + 5s if etcd cannot be reached: the key goes when its
    /// lease expires).
    public func stop(done: @escaping () -> Void) {
        guard phase == .running || phase == .idle else { return }
        self.done = done
        probeTimer?.cancel()
        probing = false
        giveUpTimer?.schedule(after: registration.drainWait + .seconds(5))
        if lease != nil && written == .enabled {
            phase = .draining
            logger.notice("stopping: setting \(key) to state drain for \(registration.drainWait.configText)")
        } else {
            phase = .stopping
            let revoking = lease.map { ": revoking lease \($0.idText)" } ?? ""
            logger.notice("stopping\(revoking)")
        }
        advance()
    }

    // MARK: - The check

    private func probe() {
        guard phase == .running, !probing else { return }
        probing = true
        HealthChecker.probe(base: base, address: registration.backend.address, endpoint: endpoint,
                            health: registration.health) { [weak self] verdict, took in
            guard let self, self.probing else { return }
            self.probing = false
            self.record(verdict, took: took)
        }
    }

    private func record(_ verdict: Probe.Verdict, took: Int64) {
        guard phase == .running else { return }
        defer { probeTimer?.schedule(after: schedule.nextDelay(for: health.state)) }
        if case .inconclusive(let why) = verdict {
            logger.warning("check could not run: out of a local resource (\(why)); the registration is unchanged")
            return
        }
        var reason: String?
        if case .fail(let why) = verdict { reason = why }
        let before = health.state
        guard let change = health.record(success: verdict == .pass, error: reason) else { return }
        let detail = HealthChecker.describe(change, from: before, health: health, check: registration.health.check,
                                            reason: reason, took: took)
        if change == .up {
            logger.notice("\(detail): registering \(key)")
        } else {
            let outcome = lease == nil ? "not registered" : "removing \(key)"
            logger.warning("\(detail): \(outcome)")
        }
        advance()
    }

    // MARK: - etcd

    /// Starts the next etcd request the state calls for, if none is in flight.
    private func advance() {
        guard call == nil, !retrying, phase != .stopped, phase != .idle else { return }
        switch phase {
        case .running:
            let wanted = health.state == .up
            if wanted, lease == nil { return grant() }
            if wanted, written != .enabled, let lease { return put(.enabled, lease) }
            if !wanted, let lease { return revoke(lease) }
            if keepaliveDue, let lease { return keepalive(lease) }
            if verifyDue, let lease { return verify(lease) }
        case .draining:
            guard let lease, written != nil else { return finish() }
            if written == .enabled { return put(.drain, lease) }
            if keepaliveDue { return keepalive(lease) }
        case .stopping:
            if written != nil { return deleteKey() }
            if let lease { return revoke(lease) }
            finish()
        case .idle, .stopped:
            break
        }
    }

    private func grant() {
        send(Etcd.leaseGrant(ttlSeconds: registration.ttl.components.seconds)) { [unowned self] body in
            let lease = try Etcd.parseLease(body)
            guard lease.ttl > 0 else { throw Etcd.ProtocolError("etcd granted lease \(lease.idText) with no TTL") }
            self.lease = lease
            written = nil
        }
    }

    private func put(_ state: OperatorState, _ lease: Etcd.Lease) {
        var backend = registration.backend
        backend.state = state
        send(Etcd.put(key: key, value: Etcd.recordValue(backend), lease: lease.id), notFound: { [unowned self] in
            // The lease expired before the put: take a new one.
            logger.warning("lease \(lease.idText) no longer exists in etcd; registering \(key) with a new one")
            self.lease = nil
            written = nil
        }) { [unowned self] body in
            _ = try Etcd.parseRevision(body)
            written = state
            if state == .enabled {
                if let restoring {
                    logger.warning("key \(key) \(restoring); registered again with lease \(lease.idText)")
                } else {
                    logger.notice("registered \(key) with lease \(lease.idText) ttl \(ttl)")
                }
                restoring = nil
                keepaliveDue = false
                keepalivesSinceVerify = 0
                verifyDue = false
                keepaliveTimer?.schedule(after: registration.keepaliveInterval)
            } else {
                logger.notice("\(key) set to state drain; deleting it in \(registration.drainWait.configText)")
                drainTimer?.schedule(after: registration.drainWait)
            }
        }
    }

    private func keepaliveTick() {
        guard lease != nil, phase == .running || phase == .draining else { return }
        keepaliveDue = true
        keepaliveTimer?.schedule(after: registration.keepaliveInterval)
        advance()
    }

    private func keepalive(_ lease: Etcd.Lease) {
        send(Etcd.leaseKeepAlive(id: lease.id)) { [unowned self] body in
            keepaliveDue = false
            let renewed = try Etcd.parseLease(body)
            if renewed.ttl == 0 {
                let again = phase == .running ? "; registering it again" : ""
                logger.warning("lease \(lease.idText) expired in etcd (keepalive answered TTL 0): \(key) is gone\(again)")
                self.lease = nil
                written = nil
                restoring = nil
            } else if phase == .running, written == .enabled {
                keepalivesSinceVerify += 1
                if keepalivesSinceVerify >= Self.keepalivesPerVerify { verifyDue = true }
            }
        }
    }

    /// A key checked every this many keepalives: about once per TTL, one small read.
    static let keepalivesPerVerify = 3

    /// Reads the key (without its value): if someone deleted it, or it is no longer under our lease, it is
    /// put again under the current one. The lease is untouched by a delete, so keepalives alone never
    /// notice.
    private func verify(_ lease: Etcd.Lease) {
        send(Etcd.get(key: key, keysOnly: true)) { [unowned self] body in
            let range = try Etcd.parseRange(body)
            verifyDue = false
            keepalivesSinceVerify = 0
            guard phase == .running, self.lease?.id == lease.id, written == .enabled else { return }
            guard let found = range.kvs.first(where: { $0.keyText == key }) else {
                written = nil
                restoring = "was deleted"
                return
            }
            if found.lease != lease.id {
                written = nil
                restoring = found.lease == 0
                    ? "was overwritten without a lease"
                    : "was overwritten under lease \(Etcd.Lease(id: found.lease, ttl: 0).idText)"
            }
        }
    }

    private func revoke(_ lease: Etcd.Lease) {
        let removed = { [unowned self] in
            self.lease = nil
            written = nil
            restoring = nil
            keepaliveTimer?.cancel()
            logger.notice(phase == .running ? "\(key) removed: lease \(lease.idText) revoked" : "lease \(lease.idText) revoked")
        }
        send(Etcd.leaseRevoke(id: lease.id), notFound: removed) { body in
            _ = try Etcd.parseRevision(body)
            removed()
        }
    }

    private func deleteKey() {
        send(Etcd.delete(key: key)) { [unowned self] body in
            _ = try Etcd.parseRevision(body)
            written = nil
            logger.notice("deleted \(key)")
        }
    }

    private func drained() {
        guard phase == .draining else { return }
        phase = .stopping
        advance()
    }

    private func giveUp() {
        guard phase == .draining || phase == .stopping else { return }
        logger.warning("could not remove \(key) from etcd at \(url)\(unreachable.map { " (\($0))" } ?? ""): it goes when its lease expires, within \(ttl)")
        finish()
    }

    private func finish() {
        guard phase != .stopped else { return }
        phase = .stopped
        call?.cancel()
        call = nil
        client?.close()
        client = nil
        for timer in [probeTimer, keepaliveTimer, retryTimer, drainTimer, giveUpTimer] { timer?.cancel() }
        let done = self.done
        self.done = nil
        done?()
    }

    /// Sends one request; `handle` reads a 200 answer (throwing if it is not what it should be). An answer
    /// that the lease does not exist goes to `notFound` when given. Anything else is a failure: retried
    /// with backoff on the next endpoint.
    private func send(_ request: Etcd.Request, notFound: (() -> Void)? = nil, _ handle: @escaping ([UInt8]) throws -> Void) {
        if client == nil {
            client = HTTPClient(base: base, address: registration.endpoints[endpointIndex])
        }
        call = client?.request(method: .post, path: request.path, body: request.body, timeout: requestTimeout) { [weak self] result in
            guard let self else { return }
            self.call = nil
            do {
                switch result {
                case .failure(let error):
                    throw Etcd.ProtocolError(error.description)
                case .success(let response) where response.status == 200:
                    try handle(response.body)
                case .success(let response):
                    let message = Etcd.errorMessage(response.body)
                    if let notFound, message?.contains("requested lease not found") == true {
                        notFound()
                    } else {
                        throw Etcd.ProtocolError("HTTP status \(response.status)" + (message.map { ": \($0)" } ?? ""))
                    }
                }
            } catch {
                return self.failed("\(request.path): \(error)")
            }
            if let unreachable = self.unreachable {
                self.logger.notice("etcd at \(self.url) answers again (after: \(unreachable))")
                self.unreachable = nil
            }
            self.failures = 0
            self.advance()
        }
    }

    private func failed(_ message: String) {
        client?.close()
        client = nil
        let delay = backoff()
        failures += 1
        let previous = url
        endpointIndex = (endpointIndex + 1) % registration.endpoints.count
        if unreachable == nil {
            let lapse = lease == nil ? "" : "; \(key) goes if lease \(lease!.idText) cannot be renewed within \(ttl)"
            logger.warning("etcd unreachable at \(previous): \(message); retrying every \(backoffCap.configText) at most\(lapse)")
            unreachable = message
        } else {
            logger.debug("etcd still unreachable at \(previous): \(message); retrying in \(delay.configText) on \(url)")
        }
        retrying = true
        retryTimer?.schedule(after: delay)
    }

    /// Retries come at least every keepalive interval (capped at 10s), so a lease outlives a short outage.
    private var backoffCap: Duration { max(.milliseconds(500), min(.seconds(10), registration.keepaliveInterval)) }

    private func backoff() -> Duration {
        var delay = Duration.milliseconds(500)
        for _ in 0..<min(failures, 30) where delay < backoffCap { delay *= 2 }
        return min(delay, backoffCap)
    }
}
