import EventLoop
import FulcrumCore
import Logging

/// Drives one client from accept to close: asks the pool's balancer for a backend, retries connect
/// failures on backends not yet tried (within the pool's retry budget), replays kept client bytes when a
/// backend fails before answering, waits in the pool's queue when every backend is at its limit, feeds
/// every outcome to the backend's breaker, and gives the backend's slot back when the relay ends.
/// Receives only per-connection events.
final class Session: RelayDelegate {
    unowned let worker: Worker
    let pool: PoolRuntime
    let clientHash: UInt64
    private(set) var relay: Relay?
    private var tried = TriedBackends()
    private var attempts = 0
    /// The backend whose slot this session holds, or -1.
    private(set) var backend = -1
    private var connectStarted: Int64 = 0
    private var lastError: String?
    private(set) var isWaiting = false
    /// A retry already granted by the budget (for a replay) and not yet used.
    private var retryGranted = false
    /// The backend of a racing hedge connect whose slot this session also holds, or -1.
    private var hedgeBackend = -1
    /// Whether the connection to `backend` (`hedgeBackend`) holds a half-open breaker trial not yet reported.
    private var trial = false
    private var hedgeTrial = false

    init(worker: Worker, pool: PoolRuntime, clientHash: UInt64) {
        self.worker = worker
        self.pool = pool
        self.clientHash = clientHash
    }

    func start(_ relay: Relay) {
        self.relay = relay
        pool.health.retryBudget.recordRequest(now: worker.base.cachedMicroseconds)
        connectNext()
    }

    /// Connects to the next backend the balancer offers; queues the client when every backend is full,
    /// closes it when none is left. Returns false if the session is (still) waiting in the queue.
    @discardableResult
    func connectNext() -> Bool {
        guard let relay else { return true }
        while true {
            guard attempts < pool.maxAttempts else { return giveUp("no backend available") }
            let now = worker.base.cachedMicroseconds
            if attempts > 0 && !retryGranted && !pool.health.retryBudget.tryRetry(now: now) {
                return giveUp("retry budget exhausted, not retrying")
            }
            retryGranted = false
            switch pool.balancer.pick(tried: tried, context: PickContext(clientHash: clientHash, now: now)) {
            case .backend(let index):
                leaveQueue()
                attempts += 1
                tried.insert(index)
                backend = index
                connectStarted = now
                trial = pool.health.picked(index, now: now)
                guard let error = relay.connect(to: pool.endpoints[index], timeoutMicroseconds: pool.connectTimeoutMicroseconds) else {
                    return true
                }
                connectFailed(error)
            case .full:
                return waitInQueue()
            case .unavailable:
                return giveUp("no backend available")
            }
        }
    }

    private func giveUp(_ why: String) -> Bool {
        worker.logger.error("\(why) for client, closing it", metadata: [
            "pool": "\(pool.config.name)", "attempts": "\(attempts)", "last_error": "\(lastError ?? "none")",
        ])
        worker.stats.clientsRefused += 1
        relay?.close(.noUpstream)
        return true
    }

    // MARK: - Queue

    private func waitInQueue() -> Bool {
        if isWaiting { return false }
        guard worker.enqueue(self) else {
            return giveUp("every backend is at max_connections and the queue is full (\(pool.config.queue.size))")
        }
        isWaiting = true
        return false
    }

    /// The session waited `queue.timeout` without a slot freeing up.
    func queueTimedOut() {
        isWaiting = false
        worker.logger.error("queue timeout: no backend slot freed in time, closing client", metadata: [
            "pool": "\(pool.config.name)", "waited": "\(pool.config.queue.timeout.configText)",
        ])
        worker.stats.clientsRefused += 1
        relay?.close(.noUpstream)
    }

    /// Leaves the queue (served or closed).
    func leaveQueue() {
        guard isWaiting else { return }
        isWaiting = false
        worker.dequeue(self)
    }

    // MARK: - Outcomes

    private func releaseSlot() {
        guard backend >= 0 else { return }
        pool.health.noVerdict(backend: backend, trial: trial, now: worker.base.cachedMicroseconds)
        trial = false
        pool.balancer.release(backend)
        backend = -1
        worker.slotFreed(pool)
    }

    /// A connect attempt failed: feed the breaker, log, give the slot back.
    private func connectFailed(_ error: ConnectError) {
        let index = backend
        let outcome: CircuitBreaker.Outcome = error == .timedOut ? .connectTimeout : .connectRefused
        pool.health.record(outcome, backend: index, trial: trial, now: worker.base.cachedMicroseconds)
        trial = false
        note("connect to backend failed", String(describing: error), backend: index)
        releaseSlot()
    }

    private func note(_ what: String, _ reason: String, backend index: Int, retrying: Bool? = nil) {
        lastError = reason
        worker.stats.connectFailures += 1
        let more = retrying ?? (attempts < pool.maxAttempts)
        worker.logger.warning("\(what)\(more ? ", retrying on another backend" : "")", metadata: [
            "pool": "\(pool.config.name)", "backend": "\(pool.config.backends[index].address)",
            "reason": "\(reason)", "attempt": "\(attempts)/\(pool.maxAttempts)",
        ])
    }

    func relayConnected(_ relay: Relay) {
        if pool.relayOptions.measureLatency, backend >= 0 {
            let now = worker.base.cachedMicroseconds
            pool.balancer.observe(latency: now - connectStarted, backend: backend, now: now)
        }
    }

    func relayConnectFailed(_ relay: Relay, error: ConnectError) {
        if backend >= 0 { connectFailed(error) }
        connectNext()
    }

    // MARK: - Hedged connects

    /// The connect is slow: race one to another backend, if attempts and the retry budget allow.
    func relayWantsHedge(_ relay: Relay) {
        let now = worker.base.cachedMicroseconds
        guard attempts < pool.maxAttempts, pool.health.retryBudget.tryRetry(now: now) else { return }
        guard case .backend(let index) = pool.balancer.pick(tried: tried, context: PickContext(clientHash: clientHash, now: now)) else {
            return
        }
        attempts += 1
        tried.insert(index)
        hedgeBackend = index
        hedgeTrial = pool.health.picked(index, now: now)
        worker.stats.hedges += 1
        worker.logger.info("connect is slow, racing a second backend", metadata: [
            "pool": "\(pool.config.name)", "slow": "\(pool.config.backends[backend].address)",
            "hedge": "\(pool.config.backends[index].address)",
        ])
        if let error = relay.connectHedge(to: pool.endpoints[index], timeoutMicroseconds: pool.connectTimeoutMicroseconds) {
            relayHedge(relay, .hedgeFailed(error))
        }
    }

    func relayHedge(_ relay: Relay, _ event: HedgeEvent) {
        switch event {
        case .primaryFailed(let error):
            connectFailed(error)
        case .hedgeWon:
            // The slow first connect was abandoned, not failed: give its slot back without blaming it.
            if backend >= 0 {
                pool.health.noVerdict(backend: backend, trial: trial, now: worker.base.cachedMicroseconds)
                pool.balancer.release(backend)
                worker.slotFreed(pool)
            }
            backend = hedgeBackend
            trial = hedgeTrial
            hedgeBackend = -1
            hedgeTrial = false
        case .hedgeFailed(let error):
            guard hedgeBackend >= 0 else { return }
            let index = hedgeBackend
            hedgeBackend = -1
            let outcome: CircuitBreaker.Outcome = error == .timedOut ? .connectTimeout : .connectRefused
            pool.health.record(outcome, backend: index, trial: hedgeTrial, now: worker.base.cachedMicroseconds)
            hedgeTrial = false
            note("hedged connect failed", String(describing: error), backend: index, retrying: false)
            pool.balancer.release(index)
            worker.slotFreed(pool)
        case .hedgeCancelled:
            guard hedgeBackend >= 0 else { return }
            pool.health.noVerdict(backend: hedgeBackend, trial: hedgeTrial, now: worker.base.cachedMicroseconds)
            hedgeTrial = false
            pool.balancer.release(hedgeBackend)
            hedgeBackend = -1
            worker.slotFreed(pool)
        }
    }

    func relayFirstByte(_ relay: Relay) {
        if backend >= 0 {
            pool.health.record(.success, backend: backend, trial: trial, now: worker.base.cachedMicroseconds)
            trial = false
        }
    }

    func relayUpstreamFailed(_ relay: Relay, _ failure: UpstreamFailure, canReplay: Bool) -> Bool {
        guard backend >= 0 else { return false }
        let outcome: CircuitBreaker.Outcome = failure == .firstByteTimeout ? .firstByteTimeout : .resetBeforeFirstByte
        pool.health.record(outcome, backend: backend, trial: trial, now: worker.base.cachedMicroseconds)
        trial = false
        guard canReplay else { return false }
        guard attempts < pool.maxAttempts else { return false }
        guard pool.health.retryBudget.tryRetry(now: worker.base.cachedMicroseconds) else {
            note("backend failed before answering; retry budget exhausted, not replaying", failure.description,
                 backend: backend, retrying: false)
            return false
        }
        retryGranted = true
        note("backend failed before answering, replaying the request", failure.description, backend: backend, retrying: false)
        worker.stats.replays += 1
        return true
    }

    func relayDetached(_ relay: Relay) {
        releaseSlot()
        connectNext()
    }

    func relayMeasured(_ relay: Relay, latency: Int64) {
        if backend >= 0 {
            pool.balancer.observe(latency: latency, backend: backend, now: worker.base.cachedMicroseconds)
        }
    }

    func relayClosed(_ relay: Relay, reason: RelayCloseReason) {
        leaveQueue()
        releaseSlot()
        if hedgeBackend >= 0 {
            pool.health.noVerdict(backend: hedgeBackend, trial: hedgeTrial, now: worker.base.cachedMicroseconds)
            hedgeTrial = false
            pool.balancer.release(hedgeBackend)
            hedgeBackend = -1
        }
        worker.stats.bytesFromClients &+= relay.bytesFromClient
        worker.stats.bytesToClients &+= relay.bytesToClient
        self.relay = nil
        worker.relayEnded()
    }
}
