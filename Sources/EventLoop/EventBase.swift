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

    public init() {
        let config = event_config_new()
        // Each base is confined to one thread, so libevent need not lock it.
        event_config_set_flag(config, Int32(EVENT_BASE_FLAG_NOLOCK.rawValue))
        guard let base = event_base_new_with_config(config) else {
            fatalError("libevent could not create an event base")
        }
        event_config_free(config)
        self.base = base
        scratch = UnsafeMutableRawPointer.allocate(byteCount: scratchSize, alignment: 64)
    }

    deinit {
        event_base_free(base)
        scratch.deallocate()
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

    /// The loop's cached time of day in microseconds; no system call while a callback runs.
    @inline(__always)
    public var cachedMicroseconds: Int64 {
        var tv = timeval()
        event_base_gettimeofday_cached(base, &tv)
        return Int64(tv.tv_sec) * 1_000_000 + Int64(tv.tv_usec)
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
