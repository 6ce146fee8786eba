import FulcrumCore
import Glibc
import Synchronization
import Testing

@Suite(.timeLimit(.minutes(1)))
struct MailboxTests {
    /// Counts wakes and answers what `answer` says (true: the wake went out).
    final class WakeCounter: Sendable {
        let count = Atomic<Int>(0)
        let answers = Mutex<[Bool]>([])
        var value: Int { count.load(ordering: .sequentiallyConsistent) }

        func wake() -> Bool {
            count.wrappingAdd(1, ordering: .sequentiallyConsistent)
            return answers.withLock { $0.isEmpty ? true : $0.removeFirst() }
        }
    }

    private func drained(_ mailbox: Mailbox<Int>) -> [Int] {
        var out: [Int] = []
        mailbox.drain { out.append($0) }
        return out
    }

    @Test func oneProducersMessagesArriveInOrderWithOneWake() {
        let wakes = WakeCounter()
        let mailbox = Mailbox<Int> { wakes.wake() }
        for i in 0..<1_000 { mailbox.post(i) }
        #expect(wakes.value == 1)
        #expect(drained(mailbox) == Array(0..<1_000))
        #expect(drained(mailbox) == [])
        #expect(wakes.value == 1)

        // After a drain, the next post wakes again; a batch is one unit with one wake.
        mailbox.post(contentsOf: [5, 6, 7])
        mailbox.post(8)
        #expect(wakes.value == 2)
        #expect(drained(mailbox) == [5, 6, 7, 8])
        mailbox.post(contentsOf: [Int]())
        #expect(wakes.value == 2)
    }

    @Test func aMessagePostedDuringADrainWakesTheLoopAgain() {
        let wakes = WakeCounter()
        let mailbox = Mailbox<Int> { wakes.wake() }
        mailbox.post(1)
        mailbox.post(2)
        var first: [Int] = []
        mailbox.drain { message in
            first.append(message)
            guard message == 1 else { return }
            // Another thread posts while the consumer is inside its drain.
            let poster = TestThread { mailbox.post(3) }
            poster.join()
        }
        #expect(first == [1, 2])
        #expect(wakes.value == 2)
        #expect(drained(mailbox) == [3])
        #expect(wakes.value == 2)
    }

    @Test func aFailedWakeIsAskedForAgainByTheNextPost() {
        let wakes = WakeCounter()
        wakes.answers.withLock { $0 = [false] }
        let mailbox = Mailbox<Int> { wakes.wake() }
        mailbox.post(1)
        #expect(wakes.value == 1)
        mailbox.post(2)
        #expect(wakes.value == 2)
        mailbox.post(3)
        #expect(wakes.value == 2)
        #expect(drained(mailbox) == [1, 2, 3])
    }

    /// Four producer threads post 10,000 messages each while a consumer thread, woken through a real pipe,
    /// drains: every message arrives exactly once, each producer's in its order; the pipe never holds more
    /// than one wake byte; wakes never outnumber drains by more than one.
    @Test func concurrentProducersLoseNothingAndKeepTheirOrder() throws {
        let producers = 4
        let perProducer = 10_000
        let total = producers * perProducer
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        let (readFD, writeFD) = (fds[0], fds[1])
        defer {
            close(readFD)
            close(writeFD)
        }
        let wakes = Atomic<Int>(0)
        let overfilled = Atomic<Int>(0)
        let mailbox = Mailbox<UInt64> {
            wakes.wrappingAdd(1, ordering: .sequentiallyConsistent)
            var queued: Int32 = 0
            _ = ioctl(writeFD, UInt(FIONREAD), &queued)
            if queued != 0 { overfilled.wrappingAdd(1, ordering: .relaxed) }
            var byte: UInt8 = 1
            return write(writeFD, &byte, 1) == 1
        }

        let result = Mutex<(received: [UInt64], drains: Int)>(([], 0))
        let consumer = TestThread {
            var received: [UInt64] = []
            received.reserveCapacity(total)
            var drains = 0
            while received.count < total {
                // A wake that never comes is a lost message: give up after 10 s rather than hang.
                var ready = pollfd(fd: readFD, events: Int16(POLLIN), revents: 0)
                guard poll(&ready, 1, 10_000) == 1 else {
                    Issue.record("no wake for 10 s with \(received.count) of \(total) messages received")
                    break
                }
                var byte: UInt8 = 0
                guard read(readFD, &byte, 1) == 1 else { break }
                drains += 1
                mailbox.drain { received.append($0) }
            }
            result.withLock { $0 = (received, drains) }
        }
        let threads = (0..<producers).map { producer in
            TestThread {
                for sequence in 0..<perProducer {
                    mailbox.post(UInt64(producer) << 32 | UInt64(sequence))
                }
            }
        }
        for thread in threads { thread.join() }
        consumer.join()

        let (received, drains) = result.withLock { $0 }
        #expect(received.count == total)
        var next = [Int](repeating: 0, count: producers)
        for message in received {
            let producer = Int(message >> 32)
            let sequence = Int(message & 0xFFFF_FFFF)
            guard producer < producers, sequence == next[producer] else {
                Issue.record("producer \(producer) message \(sequence) arrived when \(next[min(producer, producers - 1)]) was due")
                return
            }
            next[producer] += 1
        }
        #expect(next == [Int](repeating: perProducer, count: producers))
        let wakeCount = wakes.load(ordering: .sequentiallyConsistent)
        print("mailbox: \(total) messages, \(wakeCount) wakes, \(drains) drains")
        #expect(overfilled.load(ordering: .relaxed) == 0)
        #expect(wakeCount <= drains + 1)
        #expect(wakeCount < total / 2)
    }
}

/// A joinable thread for tests: blocking reads must not sit on the concurrency pool's few threads.
final class TestThread: @unchecked Sendable {
    private var thread = pthread_t()
    private let body: @Sendable () -> Void

    init(_ body: @escaping @Sendable () -> Void) {
        self.body = body
        let context = Unmanaged.passRetained(self).toOpaque()
        let result = pthread_create(&thread, nil, { context in
            let box = Unmanaged<TestThread>.fromOpaque(context!).takeRetainedValue()
            box.body()
            return nil
        }, context)
        precondition(result == 0, "pthread_create failed: \(result)")
    }

    func join() {
        pthread_join(thread, nil)
    }
}
