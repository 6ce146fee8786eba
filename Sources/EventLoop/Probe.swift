import CLibevent
import Glibc

/// One active health check: connect to a backend, optionally send bytes and read a reply, judge it, and
/// report once. Runs on an event loop without blocking it; the whole probe is bounded by its timeout.
public final class Probe {
    public enum Verdict: Equatable, Sendable {
        case pass
        case fail(String)
        /// Read more bytes before judging.
        case needMore
    }

    private let base: EventBase
    private let send: [UInt8]
    private let expectsReply: Bool
    private let judge: ([UInt8]) -> Verdict
    private var completion: ((Verdict) -> Void)?
    private var fd: Int32 = -1
    private var ioEvent: OpaquePointer?
    private var timer: OpaquePointer?
    private var sent = 0
    private var reply: [UInt8] = []
    private var connected = false
    static let maxReply = 16 << 10

    /// Starts a probe. With `expectsReply` false, a completed connect (and send) passes. `completion` is
    /// called exactly once, on the loop's thread; the probe keeps itself alive until then.
    public static func start(base: EventBase, endpoint: Endpoint, timeoutMicroseconds: Int64, send: [UInt8],
                             expectsReply: Bool, judge: @escaping ([UInt8]) -> Verdict,
                             completion: @escaping (Verdict) -> Void) {
        let probe = Probe(base: base, send: send, expectsReply: expectsReply, judge: judge, completion: completion)
        probe.begin(endpoint, timeoutMicroseconds: timeoutMicroseconds)
    }

    private init(base: EventBase, send: [UInt8], expectsReply: Bool, judge: @escaping ([UInt8]) -> Verdict,
                 completion: @escaping (Verdict) -> Void) {
        self.base = base
        self.send = send
        self.expectsReply = expectsReply
        self.judge = judge
        self.completion = completion
    }

    private func begin(_ endpoint: Endpoint, timeoutMicroseconds: Int64) {
        _ = Unmanaged.passRetained(self)
        fd = socket(endpoint.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return finish(.fail(errnoText(currentErrno))) }
        let result = endpoint.withSockaddr { Glibc.connect(fd, $0, $1) }
        if result < 0 && currentErrno != EINPROGRESS {
            return finish(.fail(ConnectError(errno: currentErrno).description))
        }
        let me = Unmanaged.passUnretained(self).toOpaque()
        timer = event_new(base.base, -1, 0, { _, _, context in
            Unmanaged<Probe>.fromOpaque(context!).takeUnretainedValue().finish(.fail("timed out"))
        }, me)
        var tv = timevalFrom(microseconds: timeoutMicroseconds)
        event_add(timer, &tv)
        ioEvent = event_new(base.base, fd, Int16(EV_WRITE | EV_PERSIST), { _, what, context in
            Unmanaged<Probe>.fromOpaque(context!).takeUnretainedValue().ready(Int32(what))
        }, me)
        event_add(ioEvent, nil)
    }

    private func ready(_ what: Int32) {
        if !connected {
            var code: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &code, &length)
            guard code == 0 else { return finish(.fail(ConnectError(errno: code).description)) }
            connected = true
        }
        if sent < send.count {
            let n = send.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + sent, send.count - sent, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if currentErrno == EAGAIN || currentErrno == EINTR { return }
                return finish(.fail("send: \(errnoText(currentErrno))"))
            }
            sent += n
            if sent < send.count { return }
        }
        guard expectsReply else { return finish(.pass) }
        if what & EV_WRITE != 0 {
            // Everything is sent: wait for the reply instead of writability.
            event_del(ioEvent)
            event_assign(ioEvent, base.base, fd, Int16(EV_READ | EV_PERSIST), { _, what, context in
                Unmanaged<Probe>.fromOpaque(context!).takeUnretainedValue().ready(Int32(what))
            }, Unmanaged.passUnretained(self).toOpaque())
            event_add(ioEvent, nil)
            return
        }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if currentErrno == EAGAIN || currentErrno == EINTR { return }
            return finish(.fail("read: \(errnoText(currentErrno))"))
        }
        if n > 0 { reply += buffer[0..<n] }
        let verdict = judge(reply)
        if verdict != .needMore { return finish(verdict) }
        if n == 0 { return finish(.fail("closed after \(reply.count) bytes without a matching reply")) }
        if reply.count > Self.maxReply { return finish(.fail("no matching reply in the first \(Self.maxReply) bytes")) }
    }

    private func finish(_ verdict: Verdict) {
        guard let completion else { return }
        self.completion = nil
        if let ioEvent { event_free(ioEvent) }
        if let timer { event_free(timer) }
        ioEvent = nil
        timer = nil
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
        completion(verdict)
        Unmanaged.passUnretained(self).release()
    }
}
