import EventLoop
import FulcrumCore

/// State of one pool shared by every worker: connection counts for limits, and the clients waiting.
final class PoolShared: @unchecked Sendable {
    let counters: SharedBackendCounters

    init(backends: Int) {
        counters = SharedBackendCounters(capacity: max(1, backends))
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
    let hashKey: HashKey?
    /// Sessions waiting for a backend slot, oldest first.
    var waiting: WaitQueue<Session>
    /// Fires at the oldest waiting session's deadline.
    var queueTimer: Timer?

    init(index: Int, config: FulcrumConfig.Pool, bufferSize: Int, shared: PoolShared, seed: UInt64, now: Int64) {
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
                                    measureLatency: strategy.measuresLatency)
        connectTimeoutMicroseconds = config.connectTimeout.microseconds
        maxAttempts = min(config.retries + 1, config.backends.count)
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
