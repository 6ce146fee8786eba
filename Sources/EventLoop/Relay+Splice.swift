import CLibevent
import Glibc

// MARK: - Splicing
//
// A direction that carries bulk moves its bytes socket -> pipe -> socket with `splice`: the kernel passes
// references to the received pages along instead of copying each byte into the scratch buffer and out
// again, which is most of what relaying a large transfer costs. It is still two system calls per chunk,
// plus, per wakeup, the splice that finds the socket empty (EAGAIN): a short splice does not prove the
// socket empty, as it also stops when the pipe is full. For small messages copying is cheaper, so a
// direction starts splicing only after a read filled the whole scratch buffer (128 KiB waiting at once),
// and goes back to copying after a wakeup that moved less than `spliceExitBytes`.

extension Relay {
    /// A wakeup of a spliced direction that moves less than this goes back to copying.
    static let spliceExitBytes = 16 << 10

    /// Whether reads from `side` may move to splicing now: splicing is on, nothing is queued for the peer
    /// (bytes stay in order), and no byte needs to be seen: the backend's first byte has arrived, and
    /// the client's bytes are not kept for a replay.
    @inline(__always)
    func maySplice(_ side: Int) -> Bool {
        options.splice && !sides[side].pipeRefused && sides[1 - side].queued == 0
            && (side == Relay.upstream ? firstByteSeen : replay == nil)
    }

    /// Moves what `side` has to read into the peer's pipe and on to the peer: until the socket is empty
    /// (EAGAIN), the peer is full (the rest waits in the pipe and reading from `side` pauses until the
    /// pipe is empty), or the end-of-file.
    ///
    /// Reading starts with an empty pipe only: `writable` resumes a spliced direction once its pipe is
    /// out. So an EAGAIN here always means the socket is empty (an empty pipe is never full), and at the
    /// end-of-file or EAGAIN no byte is left in the pipe.
    func spliceReadable(_ side: Int) {
        let source = sides + side
        let peer = 1 - side
        let destination = sides + peer
        let pool = eventBase.pipes
        if destination.pointee.piped > 0 {
            destination.pointee.writeArmed = true
            source.pointee.paused = true
            return
        }
        if destination.pointee.pipe == nil {
            guard let pipe = pool.take() else {
                // No descriptors for a pipe: this direction copies from now on.
                source.pointee.splicing = false
                source.pointee.pipeRefused = true
                return readable(side)
            }
            destination.pointee.pipe = pipe
        }
        let pipe = destination.pointee.pipe!
        let flags = UInt32(CLIBEVENT_SPLICE_F_MOVE | CLIBEVENT_SPLICE_F_NONBLOCK)
        var moved = 0
        for _ in 0..<Self.readsPerWakeup {
            let n = clibevent_splice(source.pointee.fd, pipe.write, pool.capacity, flags)
            if n > 0 {
                moved += n
                source.pointee.bytesRead &+= n
                if let counters = byteCounters { count(n, counters + side) }
                // Only the client's bytes are spliced before the backend's first byte.
                if !firstByteSeen { armFirstByteTimer() }
                destination.pointee.piped += n
                guard flushPipe(peer) else { return }
                if destination.pointee.piped > 0 {
                    // The peer is full: the rest waits in the pipe, and its writable edge sends it.
                    destination.pointee.writeArmed = true
                    source.pointee.paused = true
                    return
                }
                continue
            }
            if n == 0 {
                releasePipe(peer)
                return endOfFile(side)
            }
            let code = currentErrno
            if code == EINTR { continue }
            guard code == EAGAIN else { return failed(side, code) }
            // The socket is empty, and so is the pipe: it goes back to the pool.
            releasePipe(peer)
            if moved < Self.spliceExitBytes { source.pointee.splicing = false }
            return
        }
        event_active(ioEvent(side), EV_READ, 0)
    }

    /// Sends what waits in `side`'s pipe, until it is empty or the socket is full (a short splice: the
    /// socket then reports a writable edge once it has room). False if the relay failed.
    func flushPipe(_ side: Int) -> Bool {
        let target = sides + side
        guard let pipe = target.pointee.pipe else { return true }
        let flags = UInt32(CLIBEVENT_SPLICE_F_MOVE | CLIBEVENT_SPLICE_F_NONBLOCK)
        while target.pointee.piped > 0 {
            let n = clibevent_splice(pipe.read, target.pointee.fd, target.pointee.piped, flags)
            if n > 0 {
                target.pointee.piped -= n
                if target.pointee.piped > 0 { return true }
                continue
            }
            if n == 0 {
                // A pipe that holds bytes gave none: nothing would ever move them.
                failed(side, EPIPE)
                return false
            }
            let code = currentErrno
            if code == EINTR { continue }
            if code == EAGAIN { return true }
            failed(side, code)
            return false
        }
        return true
    }

    /// Gives `side`'s pipe back to the loop's pool (closed instead if bytes are still in it).
    func releasePipe(_ side: Int) {
        guard let pipe = sides[side].pipe else { return }
        eventBase.pipes.give(pipe, empty: sides[side].piped == 0)
        sides[side].pipe = nil
        sides[side].piped = 0
    }
}
