/// One backend as a discovery source lists it.
public struct DiscoveredBackend: Equatable, Sendable {
    /// The record's identity in its source: the etcd key, or the address for DNS answers.
    public var key: String
    public var backend: FulcrumConfig.Backend

    public init(key: String, backend: FulcrumConfig.Backend) {
        self.key = key
        self.backend = backend
    }

    /// A DNS record: keyed by its address.
    public init(_ backend: FulcrumConfig.Backend) {
        self.init(key: backend.address.description, backend: backend)
    }
}

/// What a discovery source tells its pool. Sources run on the engine's main loop and report there.
public enum DiscoveryReport: Equatable, Sendable {
    /// The complete set the source lists now: a DNS answer, or a read of a whole etcd prefix. `detail` says
    /// where it came from, for the logs (`ttl 30s`, `revision 41`).
    case snapshot([DiscoveredBackend], detail: String)
    /// One record added or changed (an etcd watch event).
    case put(DiscoveredBackend, detail: String)
    /// One record gone (an etcd delete or lease expiry), applied even when it is the last.
    case delete(key: String, detail: String)
    /// A record the source could not read (a malformed etcd value): ignored, its last good value kept.
    case invalid(key: String, message: String)
    /// The source cannot be read now (server down, timeout, NXDOMAIN): the last known set stays, the
    /// source is stale until its next success, and it tries again after `retryIn`.
    case failed(String, retryIn: Duration)
}
