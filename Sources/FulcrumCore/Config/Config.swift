/// The validated, immutable description of what a Fulcrum process runs. Built only by `ConfigLoader`.
public struct FulcrumConfig: Equatable, Sendable {
    public enum Workers: Equatable, Sendable {
        /// One event loop thread per online CPU core.
        case auto
        case count(Int)
    }

    public var workers: Workers
    /// How long open connections may run on after SIGTERM/SIGINT before the process exits anyway.
    public var drainTimeout: Duration
    /// Per-direction buffer: reading from one side stops while the other side has this much unsent.
    public var bufferSize: Int
    public var listeners: [Listener]
    /// Pools in the order the file defines them.
    public var pools: [Pool]
    /// Where to write the process id once the listeners are bound; removed at exit.
    public var pidFile: String?
    /// Where a running process serves its listening sockets to a new process (binary upgrade); off if nil.
    public var upgradeSocket: String?
    /// The admin API (`admin:`); nil when off.
    public var admin: Admin?
    /// One line per client connection when it ends; off if nil.
    public var accessLog: AccessLogConfig?
    /// The resolver for host-name backends and SRV discovery.
    public var dns = DNS()

    public static let defaultDrainTimeout: Duration = .seconds(30)
    public static let defaultBufferSize = 256 << 10

    public init(workers: Workers = .auto, drainTimeout: Duration = Self.defaultDrainTimeout,
                bufferSize: Int = Self.defaultBufferSize, listeners: [Listener], pools: [Pool],
                pidFile: String? = nil, upgradeSocket: String? = nil, accessLog: AccessLogConfig? = nil) {
        self.pidFile = pidFile
        self.accessLog = accessLog
        self.upgradeSocket = upgradeSocket
        self.workers = workers
        self.drainTimeout = drainTimeout
        self.bufferSize = bufferSize
        self.listeners = listeners
        self.pools = pools
    }

    /// The admin API: status, metrics, the status page and runtime changes, served by the main thread.
    public struct Admin: Equatable, Sendable {
        public enum Token: Equatable, Sendable {
            /// Read from this file at start and on every reload (surrounding whitespace trimmed).
            case file(String)
            /// Read from this environment variable at start.
            case environment(String)
            /// Written in the configuration itself; `fulcrum check` never prints it.
            case literal(String)
        }

        public var address: SocketAddress
        /// Required by every request that changes something; nil: none needed (loopback only).
        public var token: Token?

        public init(address: SocketAddress, token: Token? = nil) {
            self.address = address
            self.token = token
        }

        /// Loopback addresses (127.0.0.0/8, ::1): the only ones the admin may listen on without a token.
        public var isLoopback: Bool {
            switch address {
            case .ipv4(let a, _): return a.0 == 127
            case .ipv6(let bytes, _): return bytes == [UInt8](repeating: 0, count: 15) + [1]
            }
        }
    }

    public func pool(named name: String) -> Pool? { pools.first { $0.name == name } }

    public struct Listener: Equatable, Sendable {
        public var name: String
        public var address: SocketAddress
        public var pool: String
        public var backlog: Int
        /// TCP_DEFER_ACCEPT: the kernel hands a connection over only once the client has sent something,
        /// or after this long (whole seconds); nil: off. Only for protocols in which the client speaks first.
        public var deferAccept: Duration?

        public static let defaultBacklog = 4096

        public init(name: String, address: SocketAddress, pool: String, backlog: Int = Self.defaultBacklog,
                    deferAccept: Duration? = nil) {
            self.name = name
            self.address = address
            self.pool = pool
            self.backlog = backlog
            self.deferAccept = deferAccept
        }

        /// `deferAccept` in the kernel's unit, 0 when off.
        public var deferAcceptSeconds: Int32 { Int32(clamping: deferAccept?.components.seconds ?? 0) }
    }

    public struct Pool: Equatable, Sendable {
        public var name: String
        public var backends: [Backend]
        public var balance: BalanceStrategy
        public var connectTimeout: Duration
        public var idleTimeout: Duration
        /// Extra connect attempts, each on a backend not yet tried for this client.
        public var retries: Int
        /// Ramp-up window for a backend that is new or just recovered; zero turns slow start off.
        public var slowStart: Duration
        /// Where clients wait when every eligible backend is at its `max_connections`.
        public var queue: Queue
        /// Health checks, circuit breaker, retry budget and replay.
        public var resilience: Resilience
        /// `splice: auto`: a direction of a connection that carries bulk moves its bytes through a pipe with
        /// `splice`, without copying them; `splice: off` always copies.
        public var splice: Bool
        /// `backends:` entries named by host name, each resolved to every address of the name.
        public var names: [NamedBackend] = []
        /// Where the pool finds more backends than it lists, and the cap on them.
        public var discovery = Discovery()

        /// Whether anything but the file's own addresses lists backends (host names or a source).
        public var isDiscovered: Bool { !names.isEmpty || discovery.source != nil }

        public static let defaultConnectTimeout: Duration = .seconds(1)
        public static let defaultIdleTimeout: Duration = .seconds(600)
        public static let defaultRetries = 2

        public init(name: String, backends: [Backend], balance: BalanceStrategy = .roundRobin,
                    connectTimeout: Duration = Self.defaultConnectTimeout,
                    idleTimeout: Duration = Self.defaultIdleTimeout, retries: Int = Self.defaultRetries,
                    slowStart: Duration = .zero, queue: Queue = Queue(), resilience: Resilience = Resilience(),
                    splice: Bool = true) {
            self.name = name
            self.backends = backends
            self.balance = balance
            self.connectTimeout = connectTimeout
            self.idleTimeout = idleTimeout
            self.retries = retries
            self.slowStart = slowStart
            self.queue = queue
            self.resilience = resilience
            self.splice = splice
        }
    }

    /// A pool's wait queue for clients that arrive while every eligible backend is full.
    public struct Queue: Equatable, Sendable {
        /// Clients that may wait per worker; 0 closes them at once.
        public var size: Int
        public var timeout: Duration

        public static let defaultSize = 1024
        public static let defaultTimeout: Duration = .seconds(5)

        public init(size: Int = Self.defaultSize, timeout: Duration = Self.defaultTimeout) {
            self.size = size
            self.timeout = timeout
        }
    }

    public struct Backend: Equatable, Sendable {
        public var address: SocketAddress
        public var weight: Int
        /// Lower numbers are preferred: 0 for primaries, 1 for `backup: true`.
        public var priority: Int
        /// Connections across all workers above which the backend is not picked; nil for no limit.
        public var maxConnections: Int?
        /// Set by the operator: enabled, drain or disabled.
        public var state: OperatorState

        public static let maxWeight = 1000

        public init(address: SocketAddress, weight: Int = 1, priority: Int = 0, maxConnections: Int? = nil,
                    state: OperatorState = .enabled) {
            self.address = address
            self.weight = weight
            self.priority = priority
            self.maxConnections = maxConnections
            self.state = state
        }
    }
}

