import FulcrumCore

/// A discovery source: reads a registry and reports what it lists (`DiscoveryReport`) through the
/// closure it was made with. Runs on the engine's main loop, never blocks it, never on a worker; retries
/// by itself with backoff after a failure. Nothing is reported after `stop()`.
protocol DiscoverySource: AnyObject {
    /// How logs and `/status` name it: `dns redis.internal:6379`, `srv _redis._tcp.cache.internal`,
    /// `etcd /fulcrum/pools/redis/`.
    var name: String { get }
    func start()
    /// Reads the whole set again now and reports it as a snapshot (a held-back removal of every backend
    /// waits for this confirmation).
    func refresh()
    func stop()
}

typealias DiscoverySink = (DiscoveryReport) -> Void
