import EventLoop
import FulcrumCore
import Logging

/// Drives one client from accept to close by performing what its `ConnectionLifecycle` decides: picks
/// (within the retry budget), connects through one or two `Connector`s, hands the winning socket to the
/// `Relay` byte pump, waits in the pool's queue, replays, and accounts every attempt: the breaker verdict
/// and the slot release that each settlement names. Receives only per-connection events.
final class Session: RelayDelegate, ConnectorDelegate {
    typealias Lifecycle = ConnectionLifecycle

    /// Unowned without the runtime's check (an `unowned` read costs a retain and a release, measured at
    /// ~400 instructions per proxied connection): the worker outlives its sessions, which live only on its
    /// loop and are all closed before its loop ends.
    unowned(unsafe) let worker: Worker
    let pool: PoolRuntime
    let clientHash: UInt64
    /// The listener that accepted the client (kept alive for `listenerActive`), and this worker's gauge of
    /// its open clients, which counts this one until it finishes.
    let listener: ListenerMetrics
    private let listenerActive: MetricCell
    private(set) var relay: Relay?
    private(set) var lifecycle: Lifecycle
    private var tried = TriedBackends()
    private var legs = Legs()
    private var lastError: String?
    /// Waiting in the worker's queue for `pool`.
    var queued = false
    /// The worker's serving pass in which this client was last offered a slot.
    var servePass = 0
    private var finished = false
    private var driving = false
    /// The backend whose metrics count this client's connection as active, and when it was attached.
    private var counted: Int?
    private var attachedAt: Int64 = 0
    /// Events that arrived while driving; empty (and unallocated) but for re-entrant reports.
    private var deferred: [Lifecycle.Event] = []
    /// What the access log line needs; nil when the access log is off.
    private var access: AccessRecord?

    init(worker: Worker, pool: PoolRuntime, clientHash: UInt64, listener: ListenerMetrics, access: AccessRecord? = nil) {
        self.worker = worker
        self.pool = pool
        self.clientHash = clientHash
        self.listener = listener
        listenerActive = listener.active(worker.id)
        self.access = access
        lifecycle = Lifecycle(settings: pool.lifecycleSettings)
    }

    /// The backend this client's bytes are relayed to, once connected.
    var upstreamBackend: Int? { lifecycle.state == .forwarding ? lifecycle.backend : nil }
    /// The backend this client is connecting or relayed to, if any.
    var backend: Int? { lifecycle.backend }
    var isWaiting: Bool { lifecycle.isWaiting }

    func start(_ relay: Relay) {
        self.relay = relay
        let now = worker.now
        pool.health.retryBudget.recordRequest(now: now)
        access?.acceptedAt = now
        drive(.accepted)
    }

    /// Feeds one event to the lifecycle and performs its decisions until none asks for more. An event
    /// that arrives while the session is already being driven (performing a decision can reach back into
    /// this session, e.g. a slot release serving the queue it waits in) waits its turn, so every event
    /// meets the state the previous one left.
    func drive(_ event: Lifecycle.Event) {
        guard !driving else {
            deferred.append(event)
            return
        }
        driving = true
        var next: Lifecycle.Event? = event
        while true {
            while let event = next {
                let decision = lifecycle.handle(event)
                settle(decision.first)
                settle(decision.second)
                next = perform(decision.action)
            }
            guard !deferred.isEmpty else { break }
            next = deferred.removeFirst()
        }
        driving = false
    }

    // MARK: - Decisions

    private func settle(_ settlement: Lifecycle.Settlement?) {
        guard let settlement else { return }
        let now = worker.now
        switch settlement.verdict {
        case .outcome(let outcome)?:
            pool.health.record(outcome, backend: settlement.backend, trial: settlement.trial, now: now)
        case .noVerdict?:
            pool.health.noVerdict(backend: settlement.backend, trial: settlement.trial, now: now)
        case nil:
            break
        }
        if settlement.releasesSlot { worker.release(pool, backend: settlement.backend) }
    }

    private func perform(_ action: Lifecycle.Action) -> Lifecycle.Event? {
        switch action {
        case .none, .proceed, .replay:
            // `.replay` and `.proceed` are the answers `relayUpstreamFailed` returns to the relay.
            return nil
        case .pick(let retry):
            return pick(retry: retry, hedge: false)
        case .pickHedge:
            return pick(retry: true, hedge: true)
        case .connect(let leg, let backend):
            return connect(leg, backend: backend)
        case .enqueue:
            guard worker.enqueue(self) else { return .queueFull }
            // Picked `.full` just before this client was published as waiting: if it is the oldest waiter
            // of the process, pick once more so that a slot freed in between is not missed.
            return worker.isOldestWaiter(self) ? .slotFreed : nil
        case .attach(let leg):
            attach(leg)
            return nil
        case .close(let ending):
            close(ending)
            return nil
        case .finish:
            finish()
            return nil
        }
    }

    /// Offered a slot from the queue. A client that has waited may take any slot that frees, including one
    /// of a backend it tried before it waited, so no waiter holds back the clients queued after it.
    func serveFromQueue() {
        tried = TriedBackends()
        drive(.slotFreed)
    }

    private func pick(retry: Bool, hedge: Bool) -> Lifecycle.Event {
        let now = worker.now
        if retry && !pool.health.retryBudget.canRetry(now: now) {
            if !hedge {
                lastError = "retry budget exhausted"
            }
            return .retryDenied
        }
        // While others wait for a slot, a new client queues behind them instead of taking one first; the
        // oldest waiter is offered a slot first, in case one is free.
        if !hedge && lifecycle.state == .picking && worker.othersWaiting(pool) {
            worker.serveOldest(pool)
            if worker.othersWaiting(pool) { return .picked(.full) }
        }
        switch pool.balancer.pick(tried: tried, context: PickContext(clientHash: clientHash, now: now)) {
        case .backend(let backend):
            if retry { pool.health.retryBudget.spend(now: now) }
            if retry && !hedge { pool.metrics.cell(.retries).add(1) }
            tried.insert(backend)
            let trial = pool.health.picked(backend, now: now)
            return .picked(.backend(backend, trial: trial))
        case .full:
            return .picked(.full)
        case .unavailable:
            return .picked(.unavailable)
        }
    }

    private func connect(_ leg: Lifecycle.Leg, backend: Int) -> Lifecycle.Event? {
        if queued { worker.dequeue(self) }
        let connector = connector(leg)
        legs[leg].started = worker.now
        if leg == .hedge {
            worker.stats.hedges += 1
            pool.metrics.cell(.hedges).add(1)
            worker.logger.info("connect is slow, racing a second backend", metadata: [
                "pool": "\(pool.config.name)", "slow": "\(lifecycle.backend.map { address($0) } ?? "-")",
                "hedge": "\(address(backend))",
            ])
        }
        let slowAfter = leg == .primary ? pool.hedgeAfterMicroseconds : 0
        guard let error = connector.start(pool.endpoints[backend], timeoutMicroseconds: pool.connectTimeoutMicroseconds,
                                          slowAfterMicroseconds: slowAfter, startedAt: legs[leg].started) else { return nil }
        connectFailed(leg, backend: backend, error)
        return .connectFailed(leg, Self.failure(error))
    }

    private func connector(_ leg: Lifecycle.Leg) -> Connector {
        if let existing = legs[leg].connector { return existing }
        let connector = worker.takeConnector(leg: leg.rawValue)
        connector.delegate = self
        legs[leg].connector = connector
        return connector
    }

    private func attach(_ leg: Lifecycle.Leg) {
        legs[leg == .primary ? .hedge : .primary].connector?.cancel()
        guard let winner = legs[leg].connector, let relay else { return }
        var counters: MetricCell?
        if let backend = lifecycle.backend(leg) {
            let record = pool.metrics.backend(backend)
            record.cell(.connectionsTotal).add(1)
            record.cell(.connectionsActive).add(1)
            counted = backend
            attachedAt = legs[leg].connected
            counters = record.byteCells
        }
        relay.attach(winner, byteCounters: counters)
    }

    private func close(_ ending: Lifecycle.Ending) {
        cancelConnects()
        if queued { worker.dequeue(self) }
        let why: String
        switch ending {
        case .noBackend: why = "no backend available"
        case .queueFull: why = "every backend is at max_connections and the queue is full (\(pool.config.queue.size))"
        case .queueTimeout: why = "queue timeout: no backend slot freed within \(pool.config.queue.timeout.configText)"
        case .retryBudget: why = "retry budget exhausted, not retrying"
        default: why = ""
        }
        if let refusal = Self.refusal(ending) { pool.metrics.cell(refusal).add(1) }
        if ending == .localError {
            // Logged by the worker, once per accept pause or once a second, never per client.
            worker.stats.clientsRefused += 1
        } else if !why.isEmpty {
            worker.logger.error("\(why), closing the client", metadata: [
                "pool": "\(pool.config.name)", "attempts": "\(lifecycle.attempts)", "last_error": "\(lastError ?? "none")",
            ])
            worker.stats.clientsRefused += 1
        }
        relay?.close(Self.closeReason(ending))
    }

    /// The pump has ended (or never started): account and let go of everything.
    private func finish() {
        guard !finished else { return }
        finished = true
        cancelConnects()
        if queued { worker.dequeue(self) }
        if let connector = legs.primary.connector { worker.giveBack(connector) }
        if let connector = legs.hedge.connector { worker.giveBack(connector) }
        legs = Legs()
        if let relay {
            worker.stats.bytesFromClients &+= relay.bytesFromClient
            worker.stats.bytesToClients &+= relay.bytesToClient
            if let access { worker.accessLog.append(access, lifecycle: lifecycle, pool: pool, relay: relay, now: worker.now) }
        }
        uncount()
        listenerActive.add(-1)
        relay = nil
        worker.relayEnded()
    }

    /// The connection to the attached backend is over (the client ended, or a replay dropped it).
    private func uncount() {
        guard let backend = counted else { return }
        pool.metrics.backend(backend).cell(.connectionsActive).add(-1)
        counted = nil
    }

    private func cancelConnects() {
        legs.primary.connector?.cancel()
        legs.hedge.connector?.cancel()
    }

    // MARK: - Connector events

    func connectorFinished(_ connector: Connector, error: ConnectError?) {
        let leg = Lifecycle.Leg(rawValue: connector.leg) ?? .primary
        if let error {
            if let backend = lifecycle.backend(leg) { connectFailed(leg, backend: backend, error) }
            drive(.connectFailed(leg, Self.failure(error)))
            return
        }
        if let backend = lifecycle.backend(leg) {
            let now = worker.now
            let latency = now - legs[leg].started
            legs[leg].connected = now
            pool.metrics.backend(backend).observeConnect(latency)
            if pool.relayOptions.measureLatency { pool.balancer.observeConnect(latency: latency, backend: backend, now: now) }
        }
        access?.connect = worker.now - legs[leg].started
        worker.backendConnected()
        drive(.connected(leg))
        // Not attached (the client ended meanwhile): drop the socket.
        if connector.isPending { connector.cancel() }
    }

    func connectorSlow(_ connector: Connector) {
        drive(.hedgeDue)
    }

    private func connectFailed(_ leg: Lifecycle.Leg, backend: Int, _ error: ConnectError) {
        lastError = error.description
        pool.metrics.backend(backend).cell(Self.failureMetric(error)).add(1)
        access?.connectError = error
        if error.isLocal {
            worker.outOfLocalResources(error)
            return
        }
        worker.stats.connectFailures += 1
        let more = leg == .primary && lifecycle.attempts < pool.maxAttempts
        worker.logger.warning("\(leg == .hedge ? "hedged connect" : "connect to backend") failed\(more ? ", retrying on another backend" : "")", metadata: [
            "pool": "\(pool.config.name)", "backend": "\(address(backend))",
            "reason": "\(error)", "attempt": "\(lifecycle.attempts)/\(pool.maxAttempts)",
        ])
    }

    // MARK: - Relay events

    func relayFirstByte(_ relay: Relay) {
        if let backend = counted { pool.metrics.backend(backend).observeFirstByte(worker.now - attachedAt) }
        if access?.firstByteAt == nil { access?.firstByteAt = worker.now }
        drive(.firstByte)
    }

    func relayUpstreamFailed(_ relay: Relay, _ failure: UpstreamFailure) -> UpstreamFailureResponse {
        let backend = lifecycle.backend
        let now = worker.now
        let kept = relay.canReplay
        let budget = kept && pool.health.retryBudget.canRetry(now: now)
        let clientFinished = relay.clientFinished
        drive(.upstreamFailed(Self.failure(failure), clientFinished: clientFinished, canReplay: budget))
        let replaying = lifecycle.state == .replaying
        if let backend, !(failure == .closed && clientFinished) {
            lastError = failure.description
            let what: String
            if replaying {
                what = "backend failed before answering, replaying the request"
                worker.stats.replays += 1
                pool.metrics.cell(.replays).add(1)
            } else if kept && !budget {
                what = "backend failed before answering; retry budget exhausted, not replaying"
            } else if failure == .firstByteTimeout {
                what = "backend sent nothing within first_byte_timeout, closing the client"
            } else {
                what = "backend failed before answering"
            }
            worker.logger.warning("\(what)", metadata: [
                "pool": "\(pool.config.name)", "backend": "\(address(backend))", "reason": "\(failure)",
                "attempt": "\(lifecycle.attempts)/\(pool.maxAttempts)",
            ])
        }
        return replaying ? .replay : .proceed
    }

    func relayDetached(_ relay: Relay) {
        uncount()
        drive(.detached)
    }

    func relayMeasured(_ relay: Relay, latency: Int64) {
        if let backend = lifecycle.backend {
            pool.balancer.observe(latency: latency, backend: backend, now: worker.now)
        }
    }

    func relayClosed(_ relay: Relay, reason: RelayCloseReason) {
        access?.closeReason = reason
        drive(.ended(Self.ending(reason)))
    }

    // MARK: - Legs

    /// What the session holds for each of its at most two racing connects.
    private struct Legs {
        struct Leg {
            var connector: Connector?
            var started: Int64 = 0
            /// When its connect succeeded: where the first-byte time starts.
            var connected: Int64 = 0
        }

        var primary = Leg()
        var hedge = Leg()

        subscript(_ leg: Lifecycle.Leg) -> Leg {
            get { leg == .primary ? primary : hedge }
            set { if leg == .primary { primary = newValue } else { hedge = newValue } }
        }
    }

    // MARK: - Mapping

    private func address(_ backend: Int) -> String { pool.address(backend) }

    static func failure(_ error: ConnectError) -> Lifecycle.ConnectFailure {
        switch error {
        case .refused, .failed: return .refused
        case .timedOut: return .timedOut
        case .unreachable: return .unreachable
        case .local: return .local
        }
    }

    /// The connect-failure counter of an error: errors other than refused, timed out, unreachable and
    /// local count as refused, as the breaker counts them.
    static func failureMetric(_ error: ConnectError) -> BackendMetric {
        switch error {
        case .refused, .failed: return .failedRefused
        case .timedOut: return .failedTimeout
        case .unreachable: return .failedUnreachable
        case .local: return .failedLocal
        }
    }

    /// The refusal counter of an ending that closes the client without a backend.
    static func refusal(_ ending: Lifecycle.Ending) -> PoolMetric? {
        switch ending {
        case .noBackend: return .refusedNoBackend
        case .queueFull: return .refusedQueueFull
        case .queueTimeout: return .refusedQueueTimeout
        case .retryBudget: return .refusedRetryBudget
        case .localError: return .refusedLocalError
        case .completed, .clientError, .upstreamError, .idleTimeout, .backendDown, .shutdown: return nil
        }
    }

    static func failure(_ failure: UpstreamFailure) -> Lifecycle.UpstreamFailure {
        switch failure {
        case .closed: return .closed
        case .reset: return .reset
        case .firstByteTimeout: return .firstByteTimeout
        }
    }

    static func ending(_ reason: RelayCloseReason) -> Lifecycle.Ending {
        switch reason {
        case .completed: return .completed
        case .clientError: return .clientError
        case .upstreamError: return .upstreamError
        case .idleTimeout: return .idleTimeout
        case .backendDown: return .backendDown
        case .noUpstream: return .noBackend
        case .shutdown: return .shutdown
        }
    }

    static func closeReason(_ ending: Lifecycle.Ending) -> RelayCloseReason {
        switch ending {
        case .completed: return .completed
        case .clientError: return .clientError(0)
        case .upstreamError: return .upstreamError(0)
        case .idleTimeout: return .idleTimeout
        case .backendDown: return .backendDown
        case .shutdown: return .shutdown
        case .noBackend, .queueFull, .queueTimeout, .retryBudget, .localError: return .noUpstream
        }
    }
}
