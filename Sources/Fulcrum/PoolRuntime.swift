import EventLoop
import FulcrumCore

/// One worker's view of a pool: where its backends are, how to pick among them, and the timeouts to use.
/// Confined to the worker's thread.
final class PoolRuntime {
    let config: FulcrumConfig.Pool
    let endpoints: [Endpoint]
    let balancer: any Balancer
    let relayOptions: RelayOptions
    let connectTimeoutMicroseconds: Int64
    let maxAttempts: Int

    init(config: FulcrumConfig.Pool, bufferSize: Int) {
        self.config = config
        endpoints = config.backends.map { Endpoint($0.address) }
        balancer = config.balance.makeBalancer(weights: config.backends.map(\.weight))
        relayOptions = RelayOptions(highWatermark: bufferSize,
                                    idleTimeoutMicroseconds: config.idleTimeout.microseconds)
        connectTimeoutMicroseconds = config.connectTimeout.microseconds
        maxAttempts = min(config.retries + 1, config.backends.count)
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
