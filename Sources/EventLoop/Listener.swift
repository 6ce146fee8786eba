import CLibevent
import Glibc

/// Accepts connections on an already listening socket and hands each new descriptor, with the peer's
/// address, to its handler.
public final class Listener {
    private var listener: OpaquePointer?
    private let onAccept: (Int32, Endpoint) -> Void
    private let onError: (SystemError) -> Void

    /// Takes ownership of `fd`: it is closed when the listener is closed or freed.
    public init(base: EventBase, fd: Int32, onAccept: @escaping (Int32, Endpoint) -> Void,
                onError: @escaping (SystemError) -> Void) {
        self.onAccept = onAccept
        self.onError = onError
        let flags = UInt32(LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC)
        listener = evconnlistener_new(base.base, { _, fd, address, length, context in
            let peer = Endpoint(address!, length: length)
            Unmanaged<Listener>.fromOpaque(context!)._withUnsafeGuaranteedRef { $0.onAccept(fd, peer) }
        }, Unmanaged.passUnretained(self).toOpaque(), flags, 0, fd)
        evconnlistener_set_error_cb(listener) { _, context in
            let code = currentErrno
            Unmanaged<Listener>.fromOpaque(context!).takeUnretainedValue().onError(SystemError("accept", errno: code))
        }
    }

    deinit { close() }

    /// Stops accepting and closes the listening socket. Connections already accepted are not touched.
    public func close() {
        if let listener { evconnlistener_free(listener) }
        listener = nil
    }

}
