extension FulcrumConfig {
    /// The resolver for backends named by host name and for SRV discovery (`dns:`), shared by every pool.
    public struct DNS: Equatable, Sendable {
        public enum Family: String, CaseIterable, Equatable, Sendable {
            case ipv4, ipv6, both
        }

        /// Name servers to ask, in order; empty: the ones `/etc/resolv.conf` names.
        public var servers: [SocketAddress]
        /// Which address records a host name resolves to.
        public var family: Family
        /// Answers are re-resolved when their TTL ends, clamped to this range.
        public var minTTL: Duration
        public var maxTTL: Duration
        /// How long one query may take before it counts as failed.
        public var timeout: Duration

        public static let defaultMinTTL: Duration = .seconds(1)
        public static let defaultMaxTTL: Duration = .seconds(300)
        public static let defaultTimeout: Duration = .seconds(2)

        public init(servers: [SocketAddress] = [], family: Family = .ipv4, minTTL: Duration = Self.defaultMinTTL,
                    maxTTL: Duration = Self.defaultMaxTTL, timeout: Duration = Self.defaultTimeout) {
            self.servers = servers
            self.family = family
            self.minTTL = minTTL
            self.maxTTL = maxTTL
            self.timeout = timeout
        }

        /// A record's TTL as the resolver keeps it: within `minTTL ... maxTTL`.
        public func clamp(ttlSeconds: Int) -> Duration {
            min(max(.seconds(max(0, ttlSeconds)), minTTL), maxTTL)
        }
    }

    /// A `backends:` entry named by host name (`address: redis.internal:6379`): every address the name
    /// resolves to is a backend with this entry's values.
    public struct NamedBackend: Equatable, Sendable {
        public var host: String
        public var port: UInt16
        public var weight: Int
        public var priority: Int
        public var maxConnections: Int?
        public var state: OperatorState

        public init(host: String, port: UInt16, weight: Int = 1, priority: Int = 0, maxConnections: Int? = nil,
                    state: OperatorState = .enabled) {
            self.host = host
            self.port = port
            self.weight = weight
            self.priority = priority
            self.maxConnections = maxConnections
            self.state = state
        }

        /// `redis.internal:6379`
        public var name: String { "\(host):\(port)" }

        /// The backend at one of the name's addresses.
        public func backend(at address: SocketAddress) -> Backend {
            Backend(address: address, weight: weight, priority: priority, maxConnections: maxConnections, state: state)
        }
    }

    /// A pool's discovery source (`discovery:`), and the cap on what all its sources may add.
    public struct Discovery: Equatable, Sendable {
        public enum Source: Equatable, Sendable {
            /// `srv: _redis._tcp.cache.internal`: targets, ports, priorities and weights from SRV records.
            case srv(String)
            /// `etcd: {endpoints, prefix}`: one backend per key under the prefix.
            case etcd(Etcd)
        }

        /// etcd's v3 HTTP/JSON gateway, plain HTTP.
        public struct Etcd: Equatable, Sendable {
            /// Tried in order; the next one after a failure.
            public var endpoints: [SocketAddress]
            public var prefix: String

            public init(endpoints: [SocketAddress], prefix: String) {
                self.endpoints = endpoints
                self.prefix = prefix
            }
        }

        public var source: Source?
        /// Backends every discovery source of the pool may list together (host-name entries included);
        /// records beyond it are ignored and counted.
        public var maxBackends: Int

        public static let defaultMaxBackends = 1000

        public init(source: Source? = nil, maxBackends: Int = Self.defaultMaxBackends) {
            self.source = source
            self.maxBackends = maxBackends
        }
    }
}

extension FulcrumConfig.Discovery.Source {
    /// How the logs and the status name the source: `srv _redis._tcp.cache.internal`,
    /// `etcd /fulcrum/pools/redis/`.
    public var name: String {
        switch self {
        case .srv(let name): return "srv \(name)"
        case .etcd(let etcd): return "etcd \(etcd.prefix)"
        }
    }
}
