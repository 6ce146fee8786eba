import EventLoop
import FulcrumCore
import Logging

/// State of one pool shared by every worker: connection counts for limits, and the clients waiting.
final class PoolShared: @unchecked Sendable {
    let counters: SharedBackendCounters
    /// Active-check results, when the pool has health checks.
    let health: SharedHealth?
    /// The process-wide arrival order of the clients waiting for a slot.
    let order: SharedQueueOrder

    init(pool: FulcrumConfig.Pool, workers: Int) {
        counters = SharedBackendCounters(capacity: max(1, pool.backends.count))
        order = SharedQueueOrder(workers: workers)
        health = pool.resilience.health.map { _ in SharedHealth(count: pool.backends.count, initial: .unknown) }
    }
}

/// One worker's view of a pool: where its backends are, how to pick among them, the timeouts to use and
/// the clients waiting for a free slot. Confined to the worker's thread.
final class PoolRuntime {
    let index: Int
    let config: FulcrumConfig.Pool
    let endpoints: [Endpoint]
    let balancer: PoolBalancer
    let relayOptions: RelayOptions
    let connectTimeoutMicroseconds: Int64
    let maxAttempts: Int
    let lifecycleSettings: ConnectionLifecycle.Settings
    let hedgeAfterMicroseconds: Int64
    let order: SharedQueueOrder
    let hashKey: HashKey?
    let health: PoolHealth
    /// Sessions waiting for a backend slot, oldest first.
    var waiting: WaitQueue<Session>
    /// Fires at the oldest waiting session's deadline.
    var queueTimer: Timer?
    /// The worker is handing slots to this pool's waiters now; `serveAgain` asks it to look once more.
    var serving = false
    var serveAgain = false
    /// Counts `serveOldest` calls, so that each waiter is offered a slot at most once per call.
    var servePass = 0

    init(index: Int, config: FulcrumConfig.Pool, bufferSize: Int, shared: PoolShared, seed: UInt64, now: Int64,
         logger: Logger) {
        self.index = index
        self.config = config
        endpoints = config.backends.map { Endpoint($0.address) }
        let strategy = config.balance
        var seedState = seed
        balancer = PoolBalancer(
            backends: config.backends.map {
                PoolBalancer.Backend(weight: $0.weight, priority: $0.priority, maxConnections: $0.maxConnections,
                                     identity: StableHash.hash($0.address.description))
            },
            slowStart: config.slowStart, shared: shared.counters, now: now
        ) { table in
            seedState = StableHash.mix(seedState &+ 1)
            return strategy.makeStrategy(table: table, random: FastRandom(seed: seedState))
        }
        relayOptions = RelayOptions(highWatermark: bufferSize, idleTimeoutMicroseconds: config.idleTimeout.microseconds,
                                    measureLatency: strategy.measuresLatency,
                                    replayLimit: config.resilience.replayMaxBytes ?? 0,
                                    firstByteTimeoutMicroseconds: config.resilience.firstByteTimeout?.microseconds ?? 0)
        health = PoolHealth(pool: config, shared: shared.health, seed: StableHash.mix(seed ^ 0xB4EA), logger: logger)
        connectTimeoutMicroseconds = config.connectTimeout.microseconds
        maxAttempts = config.retries + 1
        hedgeAfterMicroseconds = config.resilience.hedgeAfter?.microseconds ?? 0
        lifecycleSettings = ConnectionLifecycle.Settings(maxAttempts: maxAttempts, hedging: hedgeAfterMicroseconds > 0)
        order = shared.order
        hashKey = strategy.hashKey
        waiting = WaitQueue(capacity: config.queue.size, timeout: config.queue.timeout.microseconds)
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
