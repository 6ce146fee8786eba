/// The stable identity of a backend: the pool it belongs to and its address, never its position in the file.
///
/// Reload, the admin API and discovery name backends by this identity, so a backend keeps its counters,
/// health and breaker state while the file around it is reordered, and a backend removed and listed again
/// under the same address (while its old connections still drain) is the same backend.
public struct BackendID: Hashable, Sendable, CustomStringConvertible {
    public let pool: String
    public let address: SocketAddress

    public init(pool: String, address: SocketAddress) {
        self.pool = pool
        self.address = address
    }

    /// `pool/address`, as logs and the admin API show it: `app/127.0.0.1:9001`, `app/[::1]:9001`.
    public var description: String { "\(pool)/\(address)" }
}

extension FulcrumConfig.Pool {
    /// The identity of each backend of this pool, in file order.
    public var backendIDs: [BackendID] { backends.map { BackendID(pool: name, address: $0.address) } }
}
