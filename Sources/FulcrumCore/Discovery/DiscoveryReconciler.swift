/// Follows one discovery source of one pool: turns what the source reports (`DiscoveryReport`) into the
/// pool's operations, and holds back what would most likely be the registry's mistake rather than the
/// truth. Pure: the caller passes the time and applies the operations to the `LivePool`.
///
/// Rules, for every source:
/// - A record that appears is listed; one whose values change is listed again with the new values (the
///   backend keeps its slot, health and connections); one that disappears is unlisted (it drains).
/// - Records are keyed by their source's key (an etcd key, an address for DNS); two records with one
///   address make one backend, with the first record's values.
/// - A source that fails changes nothing: the last known set stays, and the source is stale until it
///   succeeds again.
/// - A complete read (a DNS answer, a re-read of an etcd prefix) that would unlist every backend the
///   source lists is held back: what it adds is listed, what it removes stays until a second read at
///   least `confirmAfter` later says the same (`recheckAfter` asks the caller for that read). Individual
///   deletions (an etcd delete or lease expiry) apply as they come, even the last one.
/// - At most `limit` backends (the pool's `max_backends` less what its other sources list): records
///   beyond it are ignored and counted.
/// - A malformed record is ignored; its last good value stays (a source's complete read lists it with
///   that value).
public struct DiscoveryReconciler: Sendable {
    public enum Operation: Equatable, Sendable {
        /// List the backend, or list it again with new values.
        case list(FulcrumConfig.Backend)
        case unlist(SocketAddress)
    }

    public struct Outcome: Equatable, Sendable {
        public var operations: [Operation] = []
        /// What the log should say beyond the operations: a held-back removal, ignored records.
        public var notes: [String] = []
        /// Read the whole set again after this long, to confirm a held-back removal.
        public var recheckAfter: Duration?
    }

    /// How long a removal of every backend waits for a second read.
    public let confirmAfter: Duration
    /// The records by key, in the order they first appeared.
    public private(set) var records: [String: FulcrumConfig.Backend] = [:]
    private var keyOrder: [String] = []
    /// What this source lists on the pool now, by address.
    public private(set) var listed: [SocketAddress: FulcrumConfig.Backend] = [:]
    /// Keys whose latest value was malformed: their last good value stays.
    public private(set) var invalid: [String: String] = [:]
    /// Since when a removal of every backend has been held back, and which addresses it would remove.
    public private(set) var heldSince: Microseconds?
    public private(set) var held: Set<SocketAddress> = []
    /// Records left out by the last reconciliation because of the limit.
    public private(set) var ignored = 0
    /// Since when, and why, the source has been failing; nil while it answers.
    public private(set) var stale: (since: Microseconds, message: String)?

    public static let defaultConfirmAfter: Duration = .seconds(3)

    public init(confirmAfter: Duration = Self.defaultConfirmAfter) {
        self.confirmAfter = confirmAfter
    }

    /// Applies one report at `now`, with room for `limit` backends.
    public mutating func apply(_ report: DiscoveryReport, now: Microseconds, limit: Int) -> Outcome {
        switch report {
        case .failed(let message, _):
            if stale == nil { stale = (now, message) } else { stale!.message = message }
            return Outcome()
        case .invalid(let key, let message):
            invalid[key] = message
            return Outcome(notes: ["ignored \(key): \(message); its last good value stays"])
        case .snapshot(let entries, _):
            stale = nil
            var fresh: [String: FulcrumConfig.Backend] = [:]
            var order: [String] = []
            for entry in entries where fresh[entry.key] == nil {
                fresh[entry.key] = entry.backend
                order.append(entry.key)
            }
            // A read is the whole truth: a malformed record it lists comes with its last good value (the
            // source keeps it); one it does not list is gone.
            for key in invalid.keys where fresh[key] == nil { invalid[key] = nil }
            records = fresh
            keyOrder = order
            return reconcile(now: now, limit: limit, complete: true, deleted: nil)
        case .put(let entry, _):
            stale = nil
            invalid[entry.key] = nil
            if records.updateValue(entry.backend, forKey: entry.key) == nil { keyOrder.append(entry.key) }
            return reconcile(now: now, limit: limit, complete: false, deleted: nil)
        case .delete(let key, _):
            stale = nil
            invalid[key] = nil
            guard let gone = records.removeValue(forKey: key) else { return Outcome() }
            keyOrder.removeAll { $0 == key }
            return reconcile(now: now, limit: limit, complete: false, deleted: gone.address)
        }
    }

    /// The backends the records ask for, deduplicated by address, within the limit.
    private mutating func desired(limit: Int) -> [(SocketAddress, FulcrumConfig.Backend)] {
        var seen = Set<SocketAddress>()
        var result: [(SocketAddress, FulcrumConfig.Backend)] = []
        ignored = 0
        for key in keyOrder {
            guard let backend = records[key], seen.insert(backend.address).inserted else { continue }
            // Backends listed already keep their room; new ones take what is left.
            if result.count >= limit && listed[backend.address] == nil {
                ignored += 1
                continue
            }
            result.append((backend.address, backend))
        }
        if result.count > limit {
            // Listed ones beyond a lowered limit go, newest records first.
            ignored += result.count - limit
            result.removeLast(result.count - limit)
        }
        return result
    }

    private mutating func reconcile(now: Microseconds, limit: Int, complete: Bool, deleted: SocketAddress?) -> Outcome {
        var outcome = Outcome()
        let want = desired(limit: max(0, limit))
        let wanted = Set(want.map(\.0))
        var removals = listed.keys.filter { !wanted.contains($0) }

        if complete {
            if let since = heldSince {
                held.formIntersection(removals)
                if held.isEmpty {
                    // The source lists them again: nothing to confirm.
                    heldSince = nil
                } else if now - since >= confirmAfter.microseconds {
                    outcome.notes.append("a second read confirms the removal of \(held.count) backend(s)")
                    heldSince = nil
                    held = []
                } else {
                    removals.removeAll { held.contains($0) }
                    outcome.recheckAfter = .microseconds(confirmAfter.microseconds - (now - since))
                }
            } else if !listed.isEmpty && removals.count == listed.count {
                heldSince = now
                held = Set(removals)
                outcome.notes.append("held back: this read would remove all \(removals.count) backend(s) at once; "
                    + "they stay until a second read \(confirmAfter.configText) later confirms it")
                outcome.recheckAfter = confirmAfter
                removals = []
            }
        } else if !held.isEmpty {
            // A held-back removal waits for its confirming read, unless this very record was deleted.
            removals.removeAll { held.contains($0) && $0 != deleted }
            if let deleted { held.remove(deleted) }
            if held.isEmpty { heldSince = nil }
        }
        if ignored > 0 {
            outcome.notes.append("ignored \(ignored) record(s) beyond max_backends (\(limit) left for this source)")
        }
        for address in removals.sorted(by: { $0.description < $1.description }) {
            listed[address] = nil
            outcome.operations.append(.unlist(address))
        }
        for (address, backend) in want where listed[address] != backend {
            listed[address] = backend
            outcome.operations.append(.list(backend))
        }
        return outcome
    }
}
