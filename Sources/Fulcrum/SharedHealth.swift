import FulcrumCore
import Synchronization

/// Active-check results of one pool, written by the health checker's thread and read by every worker
/// when told to through its wakeup pipe.
final class SharedHealth: @unchecked Sendable {
    private let states: UnsafeMutablePointer<Atomic<UInt8>>
    private let successes: UnsafeMutablePointer<Atomic<Int>>
    let count: Int

    init(count: Int, initial: ActiveHealth.State) {
        self.count = count
        states = .allocate(capacity: max(1, count))
        successes = .allocate(capacity: max(1, count))
        for i in 0..<max(1, count) {
            (states + i).initialize(to: Atomic(Self.code(initial)))
            (successes + i).initialize(to: Atomic(0))
        }
    }

    deinit {
        states.deinitialize(count: max(1, count))
        successes.deinitialize(count: max(1, count))
        states.deallocate()
        successes.deallocate()
    }

    func state(_ backend: Int) -> ActiveHealth.State {
        switch states[backend].load(ordering: .acquiring) {
        case 1: return .up
        case 2: return .down
        default: return .unknown
        }
    }

    func setState(_ backend: Int, _ state: ActiveHealth.State) {
        states[backend].store(Self.code(state), ordering: .releasing)
    }

    /// Probe successes so far; workers compare it with what they saw last.
    func successCount(_ backend: Int) -> Int { successes[backend].load(ordering: .acquiring) }

    func recordSuccess(_ backend: Int) { successes[backend].wrappingAdd(1, ordering: .releasing) }

    private static func code(_ state: ActiveHealth.State) -> UInt8 {
        switch state {
        case .unknown: return 0
        case .up: return 1
        case .down: return 2
        }
    }
}
