/// The backend indices already tried for one client, so that a retry lands elsewhere.
/// Indices below 64 live in a bit mask; only larger pools ever allocate.
public struct TriedBackends: Sendable {
    private var bits: UInt64 = 0
    private var overflow: [Int] = []

    public init() {}

    public var isEmpty: Bool { bits == 0 && overflow.isEmpty }

    public var count: Int { bits.nonzeroBitCount + overflow.count }

    public func contains(_ index: Int) -> Bool {
        index < 64 ? bits & (1 << UInt64(index)) != 0 : overflow.contains(index)
    }

    public mutating func insert(_ index: Int) {
        if index < 64 {
            bits |= 1 << UInt64(index)
        } else if !overflow.contains(index) {
            overflow.append(index)
        }
    }
}

/// A balancing strategy: picks the backend for each new client connection.
///
/// One instance lives in each worker and is used only from that worker's thread, so strategies keep
/// plain mutable state and take no locks. Backends are addressed by their index in the pool's list.
public protocol Balancer: AnyObject {
    /// The backend for a new connection, never one in `tried`; nil when every backend was tried.
    func pick(excluding tried: TriedBackends) -> Int?
    /// The pool's backends or their weights changed; `weights[i]` is backend i's weight.
    func update(weights: [Int])
    /// A connection to backend `index` was established.
    func connectionOpened(_ index: Int)
    /// A connection to backend `index` ended.
    func connectionClosed(_ index: Int)
}

extension Balancer {
    public func connectionOpened(_ index: Int) {}
    public func connectionClosed(_ index: Int) {}
}

extension BalanceStrategy {
    /// A fresh balancer of this strategy over backends with the given weights.
    public func makeBalancer(weights: [Int]) -> any Balancer {
        switch self {
        case .roundRobin: return SmoothRoundRobin(weights: weights)
        }
    }
}
