import EventLoop
import FulcrumCore
import Logging

/// State of one pool shared by every worker: connection counts for limits, the clients waiting, and each
/// worker's metrics (written by that worker only, summed by the main loop when read).
final class PoolShared: @unchecked Sendable {
    let counters: SharedBackendCounters
    /// The process-wide arrival order of the clients waiting for a slot.
    let order: SharedQueueOrder
    /// One block per worker, by worker id.
    let metrics: [WorkerPoolMetrics]

    init(backends: Int, workers: Int) {
        counters = SharedBackendCounters(capacity: max(1, backends))
        order = SharedQueueOrder(workers: workers)
        metrics = (0..<max(1, workers)).map { _ in WorkerPoolMetrics() }
    }
}

/// One worker's view of a pool: where its backends are, how to pick among them, the timeouts to use and
/// the clients waiting for a free slot. Confined to the worker's thread; brought up to date between events
/// by `apply`, with the snapshots the main loop sends. Backends are known by their slot (see `LivePool`).
final class PoolRuntime {
    let index: Int
    /// The settings in effect for new connections; its `backends` list only the listed ones, in order.
    private(set) var config: FulcrumConfig.Pool
    /// Each slot's address, as connects need it.
    private(set) var endpoints: [Endpoint] = []
    let balancer: PoolBalancer
    private(set) var relayOptions: RelayOptions
    private(set) var connectTimeoutMicroseconds: Int64 = 0
    private(set) var maxAttempts = 1
    private(set) var lifecycleSettings = ConnectionLifecycle.Settings(maxAttempts: 1, hedging: false)
    private(set) var hedgeAfterMicroseconds: Int64 = 0
    private(set) var hashKey: HashKey?
    let order: SharedQueueOrder
    let health: PoolHealth
    /// This worker's metrics for the pool (it alone writes them).
    let metrics: WorkerPoolMetrics
    /// Sessions waiting for a backend slot, oldest first.
    var waiting: WaitQueue<Session>
    /// Fires at the oldest waiting session's deadline.
    var queueTimer: Timer?
    /// The worker is handing slots to this pool's waiters now; `serveAgain` asks it to look once more.
    var serving = false
    var serveAgain = false
    /// Counts `serveOldest` calls, so that each waiter is offered a slot at most once per call.
    var servePass = 0
    /// Every slot as last applied.
    private var slots: [PoolSnapshot.Slot] = []
    /// When each backend that is no longer listed was removed, for `removed_backend_timeout`.
    var removedSince: [Int: Int64] = [:]
    private let bufferSize: Int
    private var seedState: UInt64

    init(snapshot: PoolSnapshot, bufferSize: Int, shared: PoolShared, worker: Int, seed: UInt64, now: Int64,
         logger: Logger) {
        index = snapshot.index
        metrics = shared.metrics[worker]
        metrics.ensureCapacity(snapshot.slots.count)
        config = snapshot.settings
        self.bufferSize = bufferSize
        var seedState = seed
        let makeStrategy = Self.strategyMaker(snapshot.settings.balance, seed: &seedState)
        self.seedState = seedState
        relayOptions = RelayOptions(highWatermark: bufferSize, idleTimeoutMicroseconds: 0)
        health = PoolHealth(settings: snapshot.settings, seed: StableHash.mix(seed ^ 0xB4EA), logger: logger)
        order = shared.order
        waiting = WaitQueue(capacity: snapshot.settings.queue.size, timeout: snapshot.settings.queue.timeout.microseconds)
        balancer = PoolBalancer(backends: snapshot.slots.map(Self.balancerBackend), slowStart: snapshot.settings.slowStart,
                                shared: shared.counters, now: now, makeStrategy: makeStrategy)
        adopt(snapshot.settings)
        for slot in snapshot.slots {
            endpoints.append(Endpoint(slot.address))
            health.addBackend(slot.address, state: slot.backend.state, startingUp: true)
            if !slot.listed {
                balancer.remove(endpoints.count - 1)
                _ = health.update(endpoints.count - 1, state: slot.backend.state, listed: false)
            }
        }
        slots = snapshot.slots
        balancer.setOrder(snapshot.order)
    }

    /// The address of a slot, for logs.
    func address(_ slot: Int) -> String { "\(slots[slot].address)" }

    /// Brings this worker's view of the pool in line with `snapshot`, changing only what differs: new
    /// settings for new connections, new slots (they slow-start; with active checks they wait for their
    /// first passing check), slots no longer listed (no new connections; open ones run on), and changed
    /// weights, tiers, limits, operator states and order. Breakers, check results, slow-start ramps,
    /// connection counts and the strategy's position carry on.
    func apply(_ snapshot: PoolSnapshot, now: Int64) {
        var settings = snapshot.settings
        settings.backends = config.backends
        let settingsChanged = settings != config
        let old = config
        config = snapshot.settings
        if settingsChanged {
            adopt(snapshot.settings)
            if old.balance != snapshot.settings.balance {
                balancer.replaceStrategy(Self.strategyMaker(snapshot.settings.balance, seed: &seedState), now: now)
            }
            if old.slowStart != snapshot.settings.slowStart { balancer.setSlowStart(snapshot.settings.slowStart, now: now) }
            health.replaceSettings(snapshot.settings)
        }
        var healthChanged = settingsChanged
        metrics.ensureCapacity(snapshot.slots.count)
        for (slot, entry) in snapshot.slots.enumerated() {
            if slot >= slots.count {
                endpoints.append(Endpoint(entry.address))
                balancer.add(Self.balancerBackend(entry), now: now)
                health.addBackend(entry.address, state: entry.backend.state, startingUp: false)
                if !entry.listed { balancer.remove(slot) }
                _ = health.update(slot, state: entry.backend.state, listed: entry.listed)
                slots.append(entry)
                healthChanged = true
                continue
            }
            let before = slots[slot]
            guard before != entry else { continue }
            if entry.incarnation != before.incarnation {
                health.reset(slot)
                healthChanged = true
            }
            if entry.listed && !before.listed {
                balancer.restore(slot, now: now)
                removedSince[slot] = nil
            }
            if !entry.listed && before.listed {
                balancer.remove(slot)
                removedSince[slot] = now
            }
            balancer.update(slot, Self.balancerBackend(entry), now: now)
            if health.update(slot, state: entry.backend.state, listed: entry.listed) { healthChanged = true }
            slots[slot] = entry
        }
        balancer.setOrder(snapshot.order)
        if healthChanged { health.recompute(now: now) }
    }

    /// The per-connection values derived from the settings.
    private func adopt(_ config: FulcrumConfig.Pool) {
        let strategy = config.balance
        relayOptions = RelayOptions(highWatermark: bufferSize, idleTimeoutMicroseconds: config.idleTimeout.microseconds,
                                    measureLatency: strategy.measuresLatency,
                                    replayLimit: config.resilience.replayMaxBytes ?? 0,
                                    firstByteTimeoutMicroseconds: config.resilience.firstByteTimeout?.microseconds ?? 0,
                                    splice: config.splice)
        connectTimeoutMicroseconds = config.connectTimeout.microseconds
        maxAttempts = config.retries + 1
        hedgeAfterMicroseconds = config.resilience.hedgeAfter?.microseconds ?? 0
        lifecycleSettings = ConnectionLifecycle.Settings(maxAttempts: maxAttempts, hedging: hedgeAfterMicroseconds > 0)
        hashKey = strategy.hashKey
        waiting.capacity = config.queue.size
        waiting.timeout = config.queue.timeout.microseconds
    }

    private static func balancerBackend(_ slot: PoolSnapshot.Slot) -> PoolBalancer.Backend {
        PoolBalancer.Backend(weight: slot.backend.weight, priority: slot.backend.priority,
                             maxConnections: slot.backend.maxConnections,
                             identity: StableHash.hash(slot.address.description))
    }

    /// Makes one strategy instance per tier, each with its own random stream.
    private static func strategyMaker(_ strategy: BalanceStrategy, seed: inout UInt64)
        -> (BackendTable) -> any BalancingStrategy {
        var seedState = StableHash.mix(seed)
        seed = seedState
        return { table in
            seedState = StableHash.mix(seedState &+ 1)
            return strategy.makeStrategy(table: table, random: FastRandom(seed: seedState))
        }
    }

    /// The stable hash of a client that the pool's strategy needs, or 0.
    func clientHash(_ peer: Endpoint) -> UInt64 {
        guard let key = hashKey else { return 0 }
        let address = peer.withAddressBytes { StableHash.hash($0) }
        return key == .ipPort ? StableHash.mix(address ^ UInt64(peer.port)) : address
    }
}

extension Endpoint {
    init(_ address: SocketAddress) {
        switch address {
        case .ipv4(let bytes, let port): self.init(ipv4: bytes, port: port)
        case .ipv6(let bytes, let port): self.init(ipv6: bytes, port: port)
        }
    }
}
