import CLibevent
import Glibc

/// A one-shot timer on an event base; `schedule` arms it again. Its handler runs on the loop thread.
public final class Timer {
    private var event: OpaquePointer?
    private let handler: () -> Void

    public init(base: EventBase, handler: @escaping () -> Void) {
        self.handler = handler
        event = event_new(base.base, -1, 0, { _, _, context in
            Unmanaged<Timer>.fromOpaque(context!).takeUnretainedValue().handler()
        }, Unmanaged.passUnretained(self).toOpaque())
    }

    deinit { freeEvent(event) }

    public func schedule(after microseconds: Int64) {
        guard let event else { return }
        var tv = timevalFrom(microseconds: max(0, microseconds))
        event_add(event, &tv)
    }

    public func schedule(after duration: Duration) {
        let (seconds, attos) = duration.components
        schedule(after: seconds * 1_000_000 + attos / 1_000_000_000_000)
    }

    public func cancel() {
        if let event { event_del(event) }
    }

}

/// Watches a POSIX signal on an event base. Only one base in a process should watch signals.
public final class SignalWatcher {
    private var event: OpaquePointer?
    private let handler: (Int32) -> Void

    /// Installs the handler, then unblocks `signal` for the calling thread: a parent may hand down a mask
    /// that blocks it, and a signal that arrived while it was blocked (see `block`) is delivered to the
    /// handler instead of taking the default action.
    public init(base: EventBase, signal: Int32, handler: @escaping (Int32) -> Void) {
        self.handler = handler
        event = event_new(base.base, signal, Int16(EV_SIGNAL | EV_PERSIST), { fd, _, context in
            Unmanaged<SignalWatcher>.fromOpaque(context!).takeUnretainedValue().handler(fd)
        }, Unmanaged.passUnretained(self).toOpaque())
        event_add(event, nil)
        SignalWatcher.setMask(SIG_UNBLOCK, [signal])
    }

    deinit { freeEvent(event) }

    /// Blocks `signals` for the calling thread (and the threads it starts later): until a watcher is
    /// installed they stay pending instead of taking their default action.
    public static func block(_ signals: [Int32]) {
        setMask(SIG_BLOCK, signals)
    }

    static func setMask(_ how: Int32, _ signals: [Int32]) {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in signals { sigaddset(&set, signal) }
        pthread_sigmask(how, &set, nil)
    }
}
