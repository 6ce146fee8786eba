import CLibevent
import Glibc

/// One libevent event base: the loop of one thread. Not thread-safe; everything made from it is used
/// only on the thread that runs it.
public final class EventBase {
    let base: OpaquePointer
    /// Scratch space for moving bytes from one socket to another; shared by every relay of this loop,
    /// which is safe because a loop runs one callback at a time.
    let scratch: UnsafeMutableRawPointer
    let scratchSize = 128 << 10
    /// Room for the extents of one queue flush (`writev`), shared the same way.
    let vectors: UnsafeMutablePointer<iovec>
    static let vectorCount = 64
    /// Pipes for splicing bulk bytes between sockets, shared the same way.
    let pipes = PipePool()
    /// Callbacks one pass of the loop runs at most before it polls the sockets and timers again.
    static let callbacksPerPass: Int32 = 64

    public init() {
        let config = event_config_new()
        // Each base is confined to one thread, so libevent need not lock it.
        event_config_set_flag(config, Int32(EVENT_BASE_FLAG_NOLOCK.rawValue))
        // Not EVENT_BASE_FLAG_PRECISE_TIMER: with it libevent 2.1's epoll backend waits on a timerfd and
        // calls timerfd_settime before every epoll_wait, one more system call per loop iteration (measured:
        // 4,006 timerfd_settime for 4,004 epoll_wait over 2,000 proxied round trips, ~740 ns each here,
        // against ~150 ns for a trivial system call). Its timers then stay on CLOCK_MONOTONIC_COARSE
        // (4 ms steps), still immune to wall-clock steps; only the times Fulcrum computes with need
        // precision, and it reads them from `monotonicMicroseconds`. A timer may therefore fire up to one
        // coarse step before a deadline computed from the precise clock: every handler of a deadline
        // (idle, queue, ejection) re-arms for what remains.
        // A relay that still has bytes after its reads of one wakeup makes its event active again (an
        // edge-triggered socket reports nothing new), which puts it at the end of the queue of active
        // events being run. libevent runs that queue until it is empty before it polls again, so a stream
        // that never runs dry would keep the loop from new connections, other sockets and timers. With a
        // cap, the loop polls (without waiting) after `callbacksPerPass` callbacks and queues the sockets
        // that are ready and the timers that are due behind the events still active. The last argument
        // (0) puts every priority under the cap: with 1, priority 0, the only one Fulcrum uses, would not be.
        event_config_set_max_dispatch_interval(config, nil, Self.callbacksPerPass, 0)
        guard let base = event_base_new_with_config(config) else {
            fatalError("libevent could not create an event base")
        }
        event_config_free(config)
        self.base = base
        scratch = UnsafeMutableRawPointer.allocate(byteCount: scratchSize, alignment: 64)
        vectors = .allocate(capacity: Self.vectorCount)
        vectors.initialize(repeating: iovec(), count: Self.vectorCount)
    }

    deinit {
        event_base_free(base)
        scratch.deallocate()
        vectors.deallocate()
    }

    /// Runs the loop until `exit()` is called or nothing is left to wait for.
    public func run() {
        event_base_dispatch(base)
    }

    /// Makes `run()` return after the callbacks now running.
    public func exit() {
        event_base_loopbreak(base)
    }

    /// The backend libevent chose (epoll, kqueue, ...), for the startup log.
    public var method: String { String(cString: event_base_get_method(base)) }

    /// Now, in microseconds on the monotonic clock: every deadline (queue, ejection, slow start) and every
    /// latency sample is computed from it, so a step of the wall clock (NTP, an operator, a VM resuming)
    /// moves none of them.
    ///
    /// Read with `clock_gettime(CLOCK_MONOTONIC)`, which the kernel serves from the vDSO without a system
    /// call: about 30 ns on this project's machines (TSC clock source). libevent's cached loop time (about
    /// 6 ns, used before) adds a wall-clock offset it re-reads every 5 seconds, so a wall-clock step moved
    /// every deadline by the step; libevent 2.1 offers no cached monotonic reading. Per connection and per latency sample the 30 ns do not matter; per forwarded
    /// chunk the relay reads `coarseMicroseconds` instead.
    @inline(__always)
    public var monotonicMicroseconds: Int64 { Self.read(CLOCK_MONOTONIC) }

    /// The monotonic clock at the kernel tick's resolution (CLOCK_MONOTONIC_COARSE: 4 ms steps at most,
    /// about 10 ns to read), for what is read per forwarded chunk and needs no more precision than its
    /// timer has: a relay's last activity, which its idle timeout compares against. Never mixed with
    /// `monotonicMicroseconds` in one computation.
    @inline(__always)
    public var coarseMicroseconds: Int64 { Self.read(CLOCK_MONOTONIC_COARSE) }

    @inline(__always)
    private static func read(_ clock: clockid_t) -> Int64 {
        var ts = timespec()
        clock_gettime(clock, &ts)
        return Int64(ts.tv_sec) &* 1_000_000 &+ Int64(ts.tv_nsec / 1_000)
    }
}

@inline(__always)
func timevalFrom(microseconds: Int64) -> timeval {
    timeval(tv_sec: Int(microseconds / 1_000_000), tv_usec: Int(microseconds % 1_000_000))
}

/// Removes a libevent event from its loop and frees it; for the classes that own one `event_new` each.
func freeEvent(_ event: OpaquePointer?) {
    guard let event else { return }
    event_del(event)
    event_free(event)
}

/// The wall clock, for timestamps people read (event history, status); never for timeouts, which follow
/// the monotonic clock.
public enum WallClock {
    /// Microseconds since the Unix epoch.
    public static var microseconds: Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1_000_000 + Int64(now.tv_nsec) / 1_000
    }
}
