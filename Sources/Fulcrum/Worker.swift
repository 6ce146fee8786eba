import EventLoop
import FulcrumCore
import Logging

/// Commands the engine and other workers send to a worker through its wakeup pipe.
enum WorkerCommand: UInt8 {
    /// Stop accepting, let open connections finish, close what remains at the drain timeout.
    case drain = 0x64 // "d"
    /// Close every connection and end the loop now (a second signal).
    case stop = 0x73 // "s"
    /// A backend slot was freed in another worker: serve the pools' queues.
    case serveQueues = 0x71 // "q"
    /// The health checker has new results: read them.
    case health = 0x68 // "h"
}

/// Counters of one worker, written only by its thread and summed by the engine when the worker ends.
struct WorkerStats {
    var accepted = 0
    var connectFailures = 0
    var clientsRefused = 0
    var bytesFromClients = 0
    var bytesToClients = 0
    var replays = 0
    var hedges = 0
}

/// What a worker thread needs from the engine: plain values, descriptors and shared pool counters.
struct WorkerPlan: Sendable {
    var id: Int
    var config: FulcrumConfig
    /// This worker's own listening socket for each listener, in config order.
    var listenerFDs: [Int32]
    /// This worker's commands; the engine owns the pipe and closes it after every worker has ended.
    var wakeup: WakeupPipe
    /// Every worker's wakeup, to tell the others that a backend slot was freed.
    var allWorkers: [WakeupSender]
    /// Told `Engine.workerStopped` when the worker's loop has ended.
    var engineSender: WakeupSender
    var pools: [PoolShared]
    var seed: UInt64
    var logger: Logger
}

/// One event loop thread: accepts on its own SO_REUSEPORT sockets and relays every connection it accepts
/// to the end, so that nothing but backend connection counts is shared between workers.
final class Worker {
    let id: Int
    let base = EventBase()
    var logger: Logger
    var stats = WorkerStats()
    private let plan: WorkerPlan
    private let relays = RelayGroup()
    private var pools: [PoolRuntime] = []
    private var listeners: [Listener] = []
    private var wakeup: WakeupReceiver?
    private var drainTimer: Timer?
    private var slowStartTimer: Timer?
    private var breakerTimer: Timer?
    private var draining = false
    private var servingQueues = false

    init(plan: WorkerPlan) {
        self.plan = plan
        id = plan.id
        logger = plan.logger
        logger[metadataKey: "worker"] = "\(plan.id)"
        let config = plan.config
        let now = base.cachedMicroseconds
        pools = config.pools.enumerated().map { index, pool in
            PoolRuntime(index: index, config: pool, bufferSize: config.bufferSize, shared: plan.pools[index],
                        seed: plan.seed &+ UInt64(index) &* 0x1000_0001 &+ UInt64(plan.id), now: now, logger: logger)
        }
        for (index, listener) in config.listeners.enumerated() {
            let pool = pools.first { $0.config.name == listener.pool }!
            listeners.append(Listener(base: base, fd: plan.listenerFDs[index], onAccept: { [unowned self] fd, peer in
                self.accept(fd, peer: peer, pool: pool)
            }, onError: { [unowned self] pause in
                self.logger.error("accept failed, pausing accepts", metadata: [
                    "listener": "\(listener.name)", "error": "\(pause.error)",
                    "pause": "\(Duration.microseconds(pause.microseconds).configText)",
                    "failures_in_a_row": "\(pause.failuresInARow)",
                ])
            }))
        }
        wakeup = WakeupReceiver(base: base, pipe: plan.wakeup) { [unowned self] byte in
            switch WorkerCommand(rawValue: byte) {
            case .drain: self.drain()
            case .stop: self.base.exit()
            case .serveQueues: for pool in self.pools { self.serveQueue(pool) }
            case .health: self.refreshHealth()
            case nil: break
            }
        }
        slowStartTimer = Timer(base: base) { [unowned self] in self.advanceSlowStart() }
        breakerTimer = Timer(base: base) { [unowned self] in self.breakerDeadlinePassed() }
        for pool in pools {
            pool.health.onRecompute = { [unowned self, unowned pool] backend, eligible in
                self.eligibilityChanged(pool, backend: backend, eligible: eligible)
            }
            pool.health.recompute(now: now)
        }
    }

    /// Runs the loop until the worker has drained or is stopped; then closes what is still open and frees
    /// every handle before the base.
    func run() {
        base.run()
        relays.closeAll(.shutdown)
        for pool in pools { pool.queueTimer = nil }
        listeners.removeAll()
        drainTimer = nil
        slowStartTimer = nil
        breakerTimer = nil
        for pool in pools { pool.health.onRecompute = nil }
        wakeup = nil
        logger.info("worker stopped", metadata: [
            "accepted": "\(stats.accepted)", "refused": "\(stats.clientsRefused)",
            "connect_failures": "\(stats.connectFailures)", "replays": "\(stats.replays)", "hedges": "\(stats.hedges)",
            "bytes_in": "\(stats.bytesFromClients)", "bytes_out": "\(stats.bytesToClients)",
        ])
        plan.engineSender.send(Engine.workerStopped)
    }

    private func accept(_ fd: Int32, peer: Endpoint, pool: PoolRuntime) {
        stats.accepted += 1
        let session = Session(worker: self, pool: pool, clientHash: pool.clientHash(peer))
        let relay = Relay(base: base, clientFD: fd, options: pool.relayOptions, delegate: session, group: relays)
        session.start(relay)
    }

    func relayEnded() {
        if draining && relays.count == 0 { base.exit() }
    }

    // MARK: - Queues

    /// Puts a session at the back of its pool's queue; false when the queue is full.
    func enqueue(_ session: Session) -> Bool {
        let pool = session.pool
        guard pool.waiting.push(session, now: base.cachedMicroseconds) else { return false }
        pool.balancer.shared.waiting.wrappingAdd(1, ordering: .relaxed)
        if pool.waiting.count == 1 { armQueueTimer(pool) }
        return true
    }

    /// Takes a session out of its pool's queue wherever it is.
    func dequeue(_ session: Session) {
        let pool = session.pool
        if pool.waiting.first === session { pool.waiting.popFirst() } else { pool.waiting.remove(session) }
        pool.balancer.shared.waiting.wrappingSubtract(1, ordering: .relaxed)
        armQueueTimer(pool)
    }

    private func armQueueTimer(_ pool: PoolRuntime) {
        guard let deadline = pool.waiting.nextDeadline else {
            pool.queueTimer?.cancel()
            return
        }
        if pool.queueTimer == nil {
            pool.queueTimer = Timer(base: base) { [unowned self, unowned pool] in self.expireQueue(pool) }
        }
        pool.queueTimer?.schedule(after: deadline - base.cachedMicroseconds)
    }

    private func expireQueue(_ pool: PoolRuntime) {
        let expired = pool.waiting.expire(now: base.cachedMicroseconds)
        pool.balancer.shared.waiting.wrappingSubtract(expired.count, ordering: .relaxed)
        for session in expired { session.queueTimedOut() }
        armQueueTimer(pool)
    }

    /// A connection slot of `pool` was given back: serve this worker's waiting clients, and wake the other
    /// workers if any of theirs are waiting too.
    func slotFreed(_ pool: PoolRuntime) {
        if !pool.waiting.isEmpty { serveQueue(pool) }
        if pool.balancer.shared.waiting.load(ordering: .relaxed) > pool.waiting.count {
            for (index, sender) in plan.allWorkers.enumerated() where index != id {
                sender.send(WorkerCommand.serveQueues.rawValue)
            }
        }
    }

    /// Hands free slots to waiting clients in arrival order until the pool is full again.
    func serveQueue(_ pool: PoolRuntime) {
        guard !servingQueues else { return }
        servingQueues = true
        defer { servingQueues = false }
        // A session that is still refused stays at the head with its original deadline.
        while let session = pool.waiting.first {
            guard session.connectNext() else { break }
            // Served or closed: either way it has left the queue.
            if pool.waiting.first === session { dequeue(session) }
        }
    }

    // MARK: - Health

    /// Reads the health checker's results for every pool; closes connections of backends that went down
    /// when the pool asks for it.
    private func refreshHealth() {
        let now = base.cachedMicroseconds
        for pool in pools {
            let wentDown = pool.health.refreshActive(now: now)
            guard !wentDown.isEmpty, pool.config.resilience.onBackendDown == .close else { continue }
            for backend in wentDown {
                let closed = relays.close(.backendDown) { delegate in
                    guard let session = delegate as? Session else { return false }
                    return session.pool === pool && session.backend == backend
                }
                if closed > 0 {
                    logger.warning("closed connections of a backend marked down", metadata: [
                        "pool": "\(pool.config.name)", "backend": "\(pool.config.backends[backend].address)", "closed": "\(closed)",
                    ])
                }
            }
        }
        armBreakerTimer()
    }

    /// Eligibility of a backend changed: tell the balancer, start slow start, re-serve the queue.
    private func eligibilityChanged(_ pool: PoolRuntime, backend: Int, eligible: Bool) {
        let now = base.cachedMicroseconds
        pool.balancer.setEligible(backend, eligible, now: now)
        if pool.balancer.ramping { slowStartBegan() }
        armBreakerTimer()
        if eligible && !pool.waiting.isEmpty { serveQueue(pool) }
    }

    /// Wakes the worker when the earliest open breaker's ejection ends, to let a trial through.
    func armBreakerTimer() {
        let deadlines = pools.compactMap { $0.health.nextBreakerDeadline() }
        guard let next = deadlines.min() else { return }
        breakerTimer?.schedule(after: max(1_000, next - base.cachedMicroseconds))
    }

    private func breakerDeadlinePassed() {
        let now = base.cachedMicroseconds
        for pool in pools { pool.health.recompute(now: now) }
        armBreakerTimer()
    }

    // MARK: - Slow start

    /// Starts advancing slow start if any pool is ramping a backend up.
    func slowStartBegan() {
        slowStartTimer?.schedule(after: 100_000)
    }

    private func advanceSlowStart() {
        let now = base.cachedMicroseconds
        var ramping = false
        for pool in pools where pool.balancer.ramping {
            pool.balancer.tick(now: now)
            ramping = ramping || pool.balancer.ramping
        }
        if ramping { slowStartTimer?.schedule(after: 100_000) }
    }

    // MARK: - Drain

    private func drain() {
        guard !draining else { return }
        draining = true
        for listener in listeners { listener.close() }
        logger.info("listeners closed, draining open connections", metadata: ["open": "\(relays.count)"])
        if relays.count == 0 {
            base.exit()
            return
        }
        let timer = Timer(base: base) { [unowned self] in
            self.logger.warning("drain timeout reached, closing remaining connections", metadata: ["open": "\(self.relays.count)"])
            self.relays.closeAll(.shutdown)
            self.base.exit()
        }
        timer.schedule(after: plan.config.drainTimeout)
        drainTimer = timer
    }
}
