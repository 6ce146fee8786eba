import EventLoop
import FulcrumCore
import Logging

/// Drives one client from accept to close: asks the pool's balancer for a backend, retries connect
/// failures on backends not yet tried, waits in the pool's queue when every backend is at its limit,
/// and gives the backend's slot back when the relay ends. Receives only per-connection events.
final class Session: RelayDelegate {
    unowned let worker: Worker
    let pool: PoolRuntime
    let clientHash: UInt64
    private(set) var relay: Relay?
    private var tried = TriedBackends()
    private var attempts = 0
    /// The backend whose slot this session holds, or -1.
    private var holding = -1
    private var connectStarted: Int64 = 0
    private var lastError: ConnectError?
    private(set) var isWaiting = false

    init(worker: Worker, pool: PoolRuntime, clientHash: UInt64) {
        self.worker = worker
        self.pool = pool
        self.clientHash = clientHash
    }

    func start(_ relay: Relay) {
        self.relay = relay
        connectNext()
    }

    /// Connects to the next backend the balancer offers; queues the client when every backend is full,
    /// closes it when none is left. Returns false if the session is (still) waiting in the queue.
    @discardableResult
    func connectNext() -> Bool {
        guard let relay else { return true }
        while attempts < pool.maxAttempts {
            let now = worker.base.cachedMicroseconds
            switch pool.balancer.pick(tried: tried, context: PickContext(clientHash: clientHash, now: now)) {
            case .backend(let index):
                leaveQueue()
                attempts += 1
                tried.insert(index)
                holding = index
                connectStarted = now
                guard let error = relay.connect(to: pool.endpoints[index], timeoutMicroseconds: pool.connectTimeoutMicroseconds) else {
                    return true
                }
                releaseSlot()
                noteFailure(error, backend: index)
            case .full:
                return waitInQueue()
            case .unavailable:
                return giveUp("no backend available")
            }
        }
        return giveUp("no backend available")
    }

    private func giveUp(_ why: String) -> Bool {
        worker.logger.error("\(why) for client, closing it", metadata: [
            "pool": "\(pool.config.name)", "attempts": "\(attempts)",
            "last_error": "\(lastError.map { "\($0)" } ?? "none")",
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

    // MARK: - Relay events

    private func releaseSlot() {
        guard holding >= 0 else { return }
        pool.balancer.release(holding)
        holding = -1
        worker.slotFreed(pool)
    }

    private func noteFailure(_ error: ConnectError, backend index: Int) {
        lastError = error
        worker.stats.connectFailures += 1
        let more = attempts < pool.maxAttempts
        worker.logger.warning("connect to backend failed\(more ? ", retrying on another backend" : "")", metadata: [
            "pool": "\(pool.config.name)", "backend": "\(pool.config.backends[index].address)",
            "reason": "\(error)", "attempt": "\(attempts)/\(pool.maxAttempts)",
        ])
    }

    func relayConnected(_ relay: Relay) {
        if pool.relayOptions.measureLatency, holding >= 0 {
            let now = worker.base.cachedMicroseconds
            pool.balancer.observe(latency: now - connectStarted, backend: holding, now: now)
        }
    }

    func relayConnectFailed(_ relay: Relay, error: ConnectError) {
        let backend = holding
        releaseSlot()
        noteFailure(error, backend: backend)
        connectNext()
    }

    func relayMeasured(_ relay: Relay, latency: Int64) {
        if holding >= 0 {
            pool.balancer.observe(latency: latency, backend: holding, now: worker.base.cachedMicroseconds)
        }
    }

    func relayClosed(_ relay: Relay, reason: RelayCloseReason) {
        leaveQueue()
        releaseSlot()
        worker.stats.bytesFromClients &+= relay.bytesFromClient
        worker.stats.bytesToClients &+= relay.bytesToClient
        self.relay = nil
        worker.relayEnded()
    }
}
