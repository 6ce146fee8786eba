import Synchronization

/// An ordered queue of messages from any number of threads to one event loop: commands and snapshots from
/// the main loop to a worker, and reports from a worker back to the main loop.
///
///     producers ── post ──▶ pending ──▶ first post since the last drain: wake() ──▶ the loop wakes
///                                                                                      │
///     the loop, between events ◀── every pending message, in order ◀── drain() ◀──────┘
///
/// - Order: each producer's messages arrive in the order it posted them, and the consumer sees one total
///   order (the order in which posts took the lock).
/// - Nothing is lost: a drain takes every pending message and clears the wake flag in one step under the
///   lock, so a message posted after that step finds the flag clear and wakes the loop again.
/// - Wakeups are coalesced: at most one wake per drain is outstanding, so a slow consumer's wakeup pipe
///   holds at most one byte for its mailbox, however much is posted.
/// - A wake that fails (`wake` answers false: a shared pipe was full) clears the flag, so that the next post
///   asks again. A consumer that shares its pipe with other commands may also drain whenever it wakes.
///
/// This is control plane only, never on the data path (accept, connect, forward bytes): a post takes a
/// small mutex around an append and never blocks for longer than another post or a drain's buffer swap,
/// so the poster's loop is not held up. A drain takes the lock twice to swap buffers; after the first
/// drains it reuses its buffer and allocates nothing.
public final class Mailbox<Message: Sendable>: Sendable {
    private struct State: ~Copyable {
        var pending: [Message] = []
        /// The consumer's emptied buffer, given back for the next drain to swap in.
        var spare: [Message] = []
        var wakeRequested = false
        /// Drains so far: a failed wake clears the flag only if no drain has cleared it meanwhile.
        var drains: UInt64 = 0
    }

    private let state = Mutex(State())
    private let wake: @Sendable () -> Bool

    /// `wake` asks the consumer's loop to call `drain` (typically by writing a command byte into its
    /// wakeup pipe) and answers whether the request went out. It is called on the posting thread, outside
    /// the lock, at most once per drain.
    public init(wake: @escaping @Sendable () -> Bool) {
        self.wake = wake
    }

    /// Queues `message` for the consumer. Safe from any thread; never waits for the consumer.
    public func post(_ message: Message) {
        let ticket = state.withLock { state -> UInt64? in
            state.pending.append(message)
            return Self.requestWake(&state)
        }
        if let ticket { sendWake(ticket) }
    }

    /// Queues `messages` in their order, with one wake at most, as one unit: no other producer's message
    /// comes between them. An array, so that no caller's code runs under the lock.
    public func post(contentsOf messages: [Message]) {
        guard !messages.isEmpty else { return }
        let ticket = state.withLock { state -> UInt64? in
            state.pending.append(contentsOf: messages)
            return Self.requestWake(&state)
        }
        if let ticket { sendWake(ticket) }
    }

    /// Hands every message posted so far to `body`, oldest first, and answers how many there were. Only
    /// the consumer calls it, on its loop thread. Messages posted while `body` runs are not in this batch:
    /// they wake the loop again and come with the next drain.
    @discardableResult
    public func drain(_ body: (Message) -> Void) -> Int {
        var batch = state.withLock { state in
            state.wakeRequested = false
            state.drains &+= 1
            var taken: [Message] = []
            swap(&taken, &state.spare)
            swap(&taken, &state.pending)
            return taken
        }
        let count = batch.count
        for message in batch { body(message) }
        batch.removeAll(keepingCapacity: true)
        state.withLock { state in
            if batch.capacity > state.spare.capacity { swap(&state.spare, &batch) }
        }
        return count
    }

    /// Sets the wake flag; answers the drain count to check against if the wake must be sent, nil if one
    /// is already on its way.
    private static func requestWake(_ state: inout State) -> UInt64? {
        guard !state.wakeRequested else { return nil }
        state.wakeRequested = true
        return state.drains
    }

    private func sendWake(_ ticket: UInt64) {
        guard !wake() else { return }
        state.withLock { state in
            if state.drains == ticket { state.wakeRequested = false }
        }
    }
}
