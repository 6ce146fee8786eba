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
    /// The worker's mailbox has messages: apply them.
    case mail = 0x6D // "m"
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

/// What a worker thread needs from the engine: plain values, its wakeup, and the mailboxes both ways.
/// Pools and listening sockets arrive as messages, the first ones before the worker's loop starts.
struct WorkerPlan: Sendable {
    var id: Int
    var bufferSize: Int
    var drainTimeout: Duration
    /// This worker's commands; the engine owns the pipe and closes it after every worker has ended.
    var wakeup: WakeupPipe
    /// Every worker's wakeup, to tell the others that a backend slot was freed.
    var allWorkers: [WakeupSender]
    /// Told `Engine.workerStopped` when the worker's loop has ended.
    var engineSender: WakeupSender
    /// Messages from the main loop to this worker.
    var mailbox: Mailbox<WorkerMessage>
    /// Reports from this worker to the main loop.
    var reports: Mailbox<EngineReport>
    var seed: UInt64
    var logger: Logger
    /// The process's access log, which this worker's lines go to.
    var accessLog: AccessLog
}

/// A listening socket a worker accepts on, and where its clients go.
final class AcceptingSocket {
    var listener: Listener?
    var name: String
    var pool: PoolRuntime
    var metrics: ListenerMetrics
    /// The TCP_DEFER_ACCEPT seconds set on the socket (-1: not set by this process yet).
    var deferAcceptSeconds: Int32 = -1

    init(name: String, pool: PoolRuntime, metrics: ListenerMetrics) {
        self.name = name
        self.pool = pool
        self.metrics = metrics
    }
}

/// One event loop thread: accepts on its own SO_REUSEPORT sockets and relays every connection it accepts
/// to the end, so that nothing but backend connection counts is shared between workers.
final class Worker {
    let id: Int
    let base = EventBase()
    var logger: Logger
    var stats = WorkerStats()
    let accessLog: AccessLogBuffer
    private let plan: WorkerPlan
    private let relays = RelayGroup()
    /// Pools by their process-wide index.
    private(set) var pools: [PoolRuntime] = []
    /// Listening sockets by descriptor.
    private var sockets: [Int32: AcceptingSocket] = [:]
    private var wakeup: WakeupReceiver?
    private var drainTimer: Timer?
    private var slowStartTimer: Timer?
    private var breakerTimer: Timer?
    private var removedTimer: Timer?
    private var draining = false
    private var drainTimeout: Duration
    private var spareConnectors: [Connector] = []
    /// Accept pauses while backend sockets cannot be opened (reset by the next backend connection).
    private var localBackoff = Backoff()
    private var closingAll = false
    private var lastPortsLog: Int64 = .min / 2

    init(plan: WorkerPlan) {
        self.plan = plan
        id = plan.id
        drainTimeout = plan.drainTimeout
        logger = plan.logger
        logger[metadataKey: "worker"] = "\(plan.id)"
        accessLog = AccessLogBuffer(base: base, log: plan.accessLog)
        wakeup = WakeupReceiver(base: base, pipe: plan.wakeup) { [unowned self] byte in
            switch WorkerCommand(rawValue: byte) {
            case .drain: self.drain()
            case .stop: self.base.exit()
            case .serveQueues:
                for pool in self.pools where pool.order.takeServeRequest(worker: self.id) { self.serveOldest(pool) }
            case .mail: self.readMail()
            case nil: break
            }
        }
        slowStartTimer = Timer(base: base) { [unowned self] in self.advanceSlowStart() }
        breakerTimer = Timer(base: base) { [unowned self] in self.breakerDeadlinePassed() }
        removedTimer = Timer(base: base) { [unowned self] in self.closeRemovedBackendConnections() }
    }

    /// Runs the loop until the worker has drained or is stopped; then closes what is still open and frees
    /// every handle before the base.
    func run() {
        // The pools and sockets to start with are waiting in the mailbox.
        readMail()
        base.run()
        closeAll()
        for pool in pools { pool.queueTimer = nil }
        spareConnectors.removeAll()
        for socket in sockets.values { socket.listener?.close() }
        sockets.removeAll()
        drainTimer = nil
        slowStartTimer = nil
        breakerTimer = nil
        removedTimer = nil
        accessLog.close()
        for pool in pools {
            pool.health.onRecompute = nil
            pool.health.onBreakerOpened = nil
            pool.health.onBreakerChanged = nil
        }
        wakeup = nil
        logger.info("worker stopped", metadata: [
            "accepted": "\(stats.accepted)", "refused": "\(stats.clientsRefused)",
            "connect_failures": "\(stats.connectFailures)", "replays": "\(stats.replays)", "hedges": "\(stats.hedges)",
            "bytes_in": "\(stats.bytesFromClients)", "bytes_out": "\(stats.bytesToClients)",
        ])
        plan.engineSender.send(Engine.workerStopped)
    }

    // MARK: - Messages

    /// Applies every message the main loop has posted, in order.
    private func readMail() {
        plan.mailbox.drain { message in
            switch message {
            case .pool(let snapshot, let shared): self.apply(snapshot, shared)
            case .listeners(let assignments): self.assign(assignments)
            case .checked(let pool, let slot, let state, let passed): self.checked(pool, slot, state, passed)
            case .drainTimeout(let timeout): self.drainTimeout = timeout
            case .barrier(let generation): self.plan.reports.post(.applied(worker: self.id, generation: generation))
            }
        }
    }

    private func apply(_ snapshot: PoolSnapshot, _ shared: PoolShared) {
        let now = self.now
        if snapshot.index < pools.count {
            let pool = pools[snapshot.index]
            pool.apply(snapshot, now: now)
            if pool.balancer.ramping { slowStartBegan() }
            armBreakerTimer()
            armRemovedTimer()
            if pool.order.waiting > 0 { serveOldest(pool) }
            return
        }
        precondition(snapshot.index == pools.count, "pools arrive in index order")
        let pool = PoolRuntime(snapshot: snapshot, bufferSize: plan.bufferSize, shared: shared, worker: id,
                               seed: plan.seed &+ UInt64(snapshot.index) &* 0x1000_0001 &+ UInt64(plan.id), now: now,
                               logger: logger)
        pools.append(pool)
        pool.health.onRecompute = { [unowned self, unowned pool] change in self.eligibilityChanged(pool, change) }
        pool.health.onBreakerOpened = { [unowned self] _ in self.armBreakerTimer() }
        pool.health.onBreakerChanged = { [unowned self, unowned pool] slot, report in
            self.plan.reports.post(.breaker(worker: self.id, pool: pool.index, slot: slot, report))
        }
        pool.health.onPanicChanged = { [unowned pool] panic in pool.metrics.cell(.panic).set(panic ? 1 : 0) }
        pool.health.recompute(now: now)
    }

    /// Accepts on exactly the assigned sockets from now on: new ones start, dropped ones close, kept ones
    /// take their (possibly new) listener name and pool. While draining, nothing new is accepted.
    private func assign(_ assignments: [ListenerAssignment]) {
        let assigned = Set(assignments.map(\.fd))
        for (fd, socket) in sockets where !assigned.contains(fd) {
            socket.listener?.close()
            sockets[fd] = nil
        }
        for assignment in assignments {
            let pool = pools[assignment.pool]
            if let socket = sockets[assignment.fd] {
                socket.name = assignment.listener
                socket.pool = pool
                socket.metrics = assignment.metrics
                applyDeferAccept(assignment, to: socket)
                continue
            }
            if draining {
                Socket.close(assignment.fd)
                continue
            }
            let socket = AcceptingSocket(name: assignment.listener, pool: pool, metrics: assignment.metrics)
            // Set (or cleared) on every socket this worker starts on: a socket bound by this process has it from
            // before its `listen` already, but one taken over from an older process may come with another value.
            applyDeferAccept(assignment, to: socket)
            // Unchecked references (no retain and release per accept): the listener, whose event alone calls
            // this, belongs to the socket, which belongs to this worker.
            socket.listener = Listener(base: base, fd: assignment.fd, onAccept: { [unowned(unsafe) self, unowned(unsafe) socket] fd, peer in
                self.accept(fd, peer: peer, socket: socket)
            }, onError: { [unowned self, unowned socket] pause in
                self.logger.error("accept failed, pausing accepts", metadata: [
                    "listener": "\(socket.name)", "error": "\(pause.error)",
                    "pause": "\(Duration.microseconds(pause.microseconds).configText)",
                    "failures_in_a_row": "\(pause.failuresInARow)",
                ])
            })
            sockets[assignment.fd] = socket
        }
    }

    /// Sets the listener's `defer_accept` on its socket when it differs from what the socket has.
    private func applyDeferAccept(_ assignment: ListenerAssignment, to socket: AcceptingSocket) {
        guard socket.deferAcceptSeconds != assignment.deferAcceptSeconds else { return }
        do throws(SystemError) {
            try Socket.setDeferAccept(assignment.fd, seconds: assignment.deferAcceptSeconds)
            socket.deferAcceptSeconds = assignment.deferAcceptSeconds
        } catch {
            logger.warning("could not change defer_accept on a listening socket; it keeps its previous setting", metadata: [
                "listener": "\(assignment.listener)", "error": "\(error)",
            ])
        }
    }

    private func accept(_ fd: Int32, peer: Endpoint, socket: AcceptingSocket) {
        stats.accepted += 1
        let pool = socket.pool
        let metrics = socket.metrics
        metrics.accepted(id).add(1)
        metrics.active(id).add(1)
        let access = accessLog.isOn ? AccessRecord(listener: socket.name, client: peer) : nil
        let session = Session(worker: self, pool: pool, clientHash: pool.clientHash(peer), listener: metrics, access: access)
        let relay = Relay(base: base, clientFD: fd, options: pool.relayOptions, delegate: session, group: relays)
        session.start(relay)
    }

    func relayEnded() {
        if draining && relays.count == 0 { base.exit() }
    }

    /// The loop's current time in microseconds.
    var now: Int64 { base.monotonicMicroseconds }

    // MARK: - Local resources

    /// A backend socket could not be opened for want of this process's own resources: accepting more
    /// clients now would only close them at once, so accepting pauses (10 ms, doubling to 100 ms while it
    /// goes on), logged once per pause.
    func outOfLocalResources(_ error: ConnectError) {
        if error.isOutOfPorts {
            // Ephemeral ports run out per destination: other backends may still be reachable, so accepting
            // goes on; the log says so at most once a second.
            let now = self.now
            guard now - lastPortsLog >= 1_000_000 else { return }
            lastPortsLog = now
            logger.error("cannot open backend connections: out of ephemeral ports towards a backend; its clients are closed", metadata: [
                "error": "\(error)",
            ])
            return
        }
        let pause = localBackoff.fail()
        for socket in sockets.values { socket.listener?.pause(for: pause) }
        logger.error("cannot open backend connections: out of a local resource, pausing accepts", metadata: [
            "error": "\(error)", "pause": "\(Duration.microseconds(pause).configText)",
            "failures_in_a_row": "\(localBackoff.failuresInARow)",
        ])
    }

    /// A backend connection opened: the local back-off, if any, is over.
    @inline(__always)
    func backendConnected() { localBackoff.reset() }

    // MARK: - Connectors

    /// A connector for a session's connect, reused from earlier sessions when one is spare.
    func takeConnector(leg: Int) -> Connector {
        if leg == 0, let spare = spareConnectors.popLast() { return spare }
        return Connector(base: base, leg: leg)
    }

    /// Takes back a session's connector (idle) for later sessions.
    func giveBack(_ connector: Connector) {
        connector.delegate = nil
        if connector.leg == 0 && spareConnectors.count < 256 { spareConnectors.append(connector) }
    }

    // MARK: - Slots and queues

    /// Gives a backend slot back and hands it to the oldest waiting client of the process, if any.
    func release(_ pool: PoolRuntime, backend: Int) {
        pool.balancer.release(backend)
        if pool.order.slotReleased() && !closingAll { serveOldest(pool) }
    }

    /// Whether clients of `pool` wait anywhere in the process, in a worker that does not stand aside.
    func othersWaiting(_ pool: PoolRuntime) -> Bool { pool.order.waiting > 0 && pool.order.oldest() != nil }

    /// Whether `session` is the oldest waiting client of its pool in the whole process.
    func isOldestWaiter(_ session: Session) -> Bool {
        session.pool.waiting.first === session && session.pool.order.oldest() == id
    }

    /// Puts a session at the back of its pool's queue with the next process-wide ticket; false when full.
    func enqueue(_ session: Session) -> Bool {
        let pool = session.pool
        guard pool.waiting.push(session, now: now, ticket: pool.order.takeTicket()) else { return false }
        session.queued = true
        pool.order.update(worker: id, head: pool.waiting.firstTicket, delta: 1)
        pool.metrics.cell(.queueLength).set(pool.waiting.count)
        if pool.waiting.count == 1 { armQueueTimer(pool) }
        return true
    }

    /// Takes a session out of its pool's queue wherever it is.
    func dequeue(_ session: Session) {
        let pool = session.pool
        if pool.waiting.first === session { pool.waiting.popFirst() } else { pool.waiting.remove(session) }
        session.queued = false
        pool.order.update(worker: id, head: pool.waiting.firstTicket, delta: -1)
        pool.metrics.cell(.queueLength).set(pool.waiting.count)
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
        pool.queueTimer?.schedule(after: max(0, deadline - now))
    }

    private func expireQueue(_ pool: PoolRuntime) {
        let expired = pool.waiting.expire(now: now)
        pool.order.update(worker: id, head: pool.waiting.firstTicket, delta: -expired.count)
        pool.metrics.cell(.queueLength).set(pool.waiting.count)
        for session in expired {
            session.queued = false
            session.drive(.queueTimedOut)
        }
        armQueueTimer(pool)
        // A slot may be free for the next oldest waiter while a wakeup meant for these went nowhere.
        if !expired.isEmpty && pool.order.waiting > 0 { serveOldest(pool) }
    }

    /// Offers free slots to the process's oldest waiting clients: serves them here while this worker holds
    /// the oldest, and wakes the worker that does as soon as another one holds it. A waiter served from the
    /// queue may take any free slot (its earlier tries are forgotten once it has waited); if this worker
    /// still refuses its oldest waiter, it stands aside (see `SharedQueueOrder`) and wakes the next one. A
    /// call made while serving (a served client's connect failing at once releases its slot) makes the
    /// serving loop look again rather than being lost.
    func serveOldest(_ pool: PoolRuntime) {
        if pool.serving {
            pool.serveAgain = true
            return
        }
        pool.serving = true
        pool.servePass &+= 1
        defer { pool.serving = false }
        repeat {
            pool.serveAgain = false
            pool.order.reconsider(worker: id)
            serveLoop(pool)
        } while pool.serveAgain
    }

    private func serveLoop(_ pool: PoolRuntime) {
        while let oldest = pool.order.oldest() {
            guard oldest == id, let session = pool.waiting.first else {
                if oldest != id { requestServe(oldest, pool) }
                return
            }
            // Offered a slot once per call: one that failed and queued again waits for the next release.
            guard session.servePass != pool.servePass else { return }
            session.servePass = pool.servePass
            let ticket = pool.waiting.firstTicket
            let releases = pool.order.releaseCount
            session.serveFromQueue()
            if pool.waiting.first === session && pool.waiting.firstTicket == ticket {
                // Still refused: it keeps its place and deadline; let the next worker's waiters try.
                pool.order.standAside(worker: id)
                if pool.order.releaseCount != releases {
                    // A slot was released elsewhere meanwhile: offer it on the loop's next turn.
                    pool.order.reconsider(worker: id)
                    requestServe(id, pool)
                    return
                }
                if let next = pool.order.oldest() { requestServe(next, pool) }
                return
            }
            // Served, closed, or queued again behind the others: look at the new oldest.
        }
    }

    /// Asks a worker (this one included: on the loop's next turn) to serve `pool`, waking it unless a
    /// request is already pending.
    private func requestServe(_ worker: Int, _ pool: PoolRuntime) {
        if pool.order.requestServe(worker: worker), !plan.allWorkers[worker].send(WorkerCommand.serveQueues.rawValue) {
            // Its pipe is full (it is far behind): the next request must try again.
            pool.order.cancelServeRequest(worker: worker)
        }
    }

    // MARK: - Health

    /// An active check's verdict: closes the connections of a backend that went down when the pool asks
    /// for it.
    private func checked(_ index: Int, _ slot: Int, _ state: ActiveHealth.State, _ passed: Bool) {
        guard index < pools.count else { return }
        let pool = pools[index]
        let wentDown = pool.health.checked(slot, state: state, passed: passed, now: now)
        armBreakerTimer()
        guard wentDown, pool.config.resilience.onBackendDown == .close else { return }
        let closed = closeConnections(of: slot, in: pool, connectingToo: false)
        if closed > 0 {
            logger.warning("closed connections of a backend marked down", metadata: [
                "pool": "\(pool.config.name)", "backend": "\(pool.address(slot))", "closed": "\(closed)",
            ])
        }
    }

    /// Eligibility of a backend changed: tell the balancer, start slow start, re-serve the queue.
    private func eligibilityChanged(_ pool: PoolRuntime, _ change: PoolHealth.Change) {
        let now = base.monotonicMicroseconds
        pool.balancer.setEligible(change.backend, change.eligible, now: now, slowStart: change.rampUp)
        if pool.balancer.ramping { slowStartBegan() }
        armBreakerTimer()
        if change.eligible && pool.order.waiting > 0 { serveOldest(pool) }
    }

    /// Wakes the worker when the earliest open breaker's ejection ends, to move it to half-open. Armed only
    /// for ejections still to come, so an idle worker sleeps until then.
    func armBreakerTimer() {
        let now = base.monotonicMicroseconds
        var next: Microseconds?
        for pool in pools {
            if let deadline = pool.health.nextBreakerDeadline(after: now), deadline < (next ?? .max) { next = deadline }
        }
        guard let next else {
            breakerTimer?.cancel()
            return
        }
        breakerTimer?.schedule(after: next - now)
    }

    private func breakerDeadlinePassed() {
        let now = base.monotonicMicroseconds
        for pool in pools { pool.health.recompute(now: now) }
        armBreakerTimer()
    }

    // MARK: - Removed backends

    /// Wakes the worker when the first removed backend's `removed_backend_timeout` ends.
    private func armRemovedTimer() {
        var next: Int64?
        for pool in pools {
            guard let timeout = pool.config.resilience.removedBackendTimeout?.microseconds else { continue }
            for since in pool.removedSince.values where since + timeout < (next ?? .max) { next = since + timeout }
        }
        guard let next else {
            removedTimer?.cancel()
            return
        }
        removedTimer?.schedule(after: max(0, next - now))
    }

    /// Closes this worker's connections relayed to a backend (and, with `connectingToo`, those still
    /// connecting to it); returns how many.
    private func closeConnections(of slot: Int, in pool: PoolRuntime, connectingToo: Bool) -> Int {
        relays.close(.backendDown) { delegate in
            guard let session = delegate as? Session, session.pool === pool else { return false }
            return (connectingToo ? session.backend : session.upstreamBackend) == slot
        }
    }

    /// Closes the connections still open to backends removed `removed_backend_timeout` ago.
    private func closeRemovedBackendConnections() {
        let now = self.now
        for pool in pools {
            guard let timeout = pool.config.resilience.removedBackendTimeout?.microseconds else { continue }
            for (slot, since) in pool.removedSince where since + timeout <= now {
                pool.removedSince[slot] = nil
                let closed = closeConnections(of: slot, in: pool, connectingToo: true)
                if closed > 0 {
                    logger.warning("closed connections of a removed backend: removed_backend_timeout reached", metadata: [
                        "pool": "\(pool.config.name)", "backend": "\(pool.address(slot))", "closed": "\(closed)",
                        "removed_backend_timeout": "\(Duration.microseconds(timeout).configText)",
                    ])
                }
            }
        }
        armRemovedTimer()
    }

    // MARK: - Slow start

    /// Starts advancing slow start if any pool is ramping a backend up.
    func slowStartBegan() {
        slowStartTimer?.schedule(after: 100_000)
    }

    private func advanceSlowStart() {
        let now = base.monotonicMicroseconds
        var ramping = false
        for pool in pools where pool.balancer.ramping {
            pool.balancer.tick(now: now)
            ramping = ramping || pool.balancer.ramping
        }
        if ramping { slowStartTimer?.schedule(after: 100_000) }
    }

    // MARK: - Drain

    /// Closes every connection; the slots they free go to none of this worker's waiters, which close too
    /// (other workers' waiters are served by their own releases or time out; all workers drain together).
    private func closeAll() {
        closingAll = true
        relays.closeAll(.shutdown)
    }

    private func drain() {
        guard !draining else { return }
        draining = true
        for socket in sockets.values { socket.listener?.close() }
        logger.info("listeners closed, draining open connections", metadata: ["open": "\(relays.count)"])
        if relays.count == 0 {
            base.exit()
            return
        }
        let timer = Timer(base: base) { [unowned self] in
            self.logger.warning("drain timeout reached, closing remaining connections", metadata: ["open": "\(self.relays.count)"])
            self.closeAll()
            self.base.exit()
        }
        timer.schedule(after: drainTimeout)
        drainTimer = timer
    }
}
