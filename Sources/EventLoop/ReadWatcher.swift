import CLibevent
import Glibc

/// Calls its handler on the loop thread whenever a descriptor is readable (a listening socket with a
/// connection waiting, a socket with bytes or an end of file). Does not own the descriptor.
public final class ReadWatcher {
    private var event: OpaquePointer?
    private let handler: () -> Void

    public init(base: EventBase, fd: Int32, handler: @escaping () -> Void) {
        self.handler = handler
        event = event_new(base.base, fd, Int16(EV_READ | EV_PERSIST), { _, _, context in
            Unmanaged<ReadWatcher>.fromOpaque(context!).takeUnretainedValue().handler()
        }, Unmanaged.passUnretained(self).toOpaque())
        event_add(event, nil)
    }

    /// Stops watching; the descriptor may be closed afterwards.
    public func cancel() {
        freeEvent(event)
        event = nil
    }

    deinit { freeEvent(event) }
}
