import Foundation
@testable import FerryCopy
@testable import FerrySystem
import FerryTestSupport
import Glibc
import Synchronization
import Testing

/// What a cloner saw of each new file when it was called.
final class LayoutCalls: Sendable {
    struct Call: Equatable { var size: Int64; var delayed: Bool; var hadAttribute: Bool }
    let calls = Mutex<[Call]>([])
    func add(_ call: Call) { calls.withLock { $0.append(call) } }
    var all: [Call] { calls.withLock { $0 } }
}

/// A layout carried by a user attribute, the way Lustre's is carried by `lustre.lov` (Lustre
/// cannot run on this machine): the copy is given the source's value with a suffix, so what the
/// cloner set can be told from a plain copy of the attribute.
struct AttributeLayoutCloner: LayoutCloner {
    static let name: ByteString = Array("user.test.layout".utf8)
    let calls: LayoutCalls
    var failing = false
    var directoryLayouts = false
    var layoutAttributeNames: Set<ByteString> { [Self.name] }
    var createFlags: OpenFlags { .delayLayout }
    struct Refused: Error, CustomStringConvertible { var description: String { "EINVAL: no such OST pool" } }

    func cloneLayout(from source: FileDescriptor, to destination: FileDescriptor) throws {
        let size = try destination.status().size
        let flags = Glibc.fcntl(destination.rawValue, F_GETFL)
        let value = try ExtendedAttributes.value(source, Self.name)
        calls.add(.init(size: Int64(size), delayed: flags & O_ASYNC != 0, hadAttribute: value != nil))
        if failing { throw Refused() }
        guard let value else { return }
        try ExtendedAttributes.set(destination, Self.name, value + Array("/given before data".utf8))
    }
}

private func attribute(_ path: String, _ name: String) throws -> String? {
    let fd = try currentWorkingDirectory.openAt(Array(path.utf8), [.noFollow])
    defer { fd.closeQuietly() }
    return try ExtendedAttributes.value(fd, Array(name.utf8)).map { String(decoding: $0, as: UTF8.self) }
}

private func setAttribute(_ path: String, _ name: String, _ value: String) throws {
    let fd = try currentWorkingDirectory.openAt(Array(path.utf8), [.noFollow])
    defer { fd.closeQuietly() }
    try ExtendedAttributes.set(fd, Array(name.utf8), Array(value.utf8))
}

@Suite("Layouts and Lustre's own attributes on loop XFS (root)", .enabled(if: Environment.canMountXFS), .serialized)
struct LayoutTests {
    /// Each new file is given its layout while it is empty and made with the cloner's flags
    /// (Lustre's delayed creation); the ordinary xattr copy after the data does not set the layout
    /// again. A directory's is copied only where the cloner says (within one filesystem: Lustre
    /// lists the filesystem's default for a directory without one of its own).
    @Test func eachFileGetsItsLayoutBeforeItsData() throws {
        try withLoopXFS { fs in
            let a = try fs.makeProjectDirectory("a", project: 1)
            let b = try fs.makeProjectDirectory("b", project: 2)
            try FileManager.default.createDirectory(atPath: a + "/d/sub", withIntermediateDirectories: true)
            try TreeBuilder.write(a + "/d/wide", bytes: 3 << 20)
            try TreeBuilder.write(a + "/d/sub/narrow", bytes: 5000, seed: 2)
            try TreeBuilder.write(a + "/d/plain", bytes: 100, seed: 3)
            try setAttribute(a + "/d", "user.test.layout", "default: 8 stripes")
            try setAttribute(a + "/d/wide", "user.test.layout", "16 stripes")
            try setAttribute(a + "/d/wide", "user.other", "kept")
            try setAttribute(a + "/d/sub/narrow", "user.test.layout", "1 stripe")
            let calls = LayoutCalls()
            let report = try engineCopy(a, "d", to: b, options: CopyOptions(jobs: 2, layoutCloner: AttributeLayoutCloner(calls: calls), requireXattrs: true))
            #expect(report.noteCount == 0, "\(report.notes)")
            #expect(calls.all.count == 3)
            #expect(calls.all.allSatisfy { $0.size == 0 && $0.delayed }, "\(calls.all)")
            #expect(calls.all.filter(\.hadAttribute).count == 2)
            #expect(try attribute(b + "/d/wide", "user.test.layout") == "16 stripes/given before data")
            #expect(try attribute(b + "/d/sub/narrow", "user.test.layout") == "1 stripe/given before data")
            #expect(try attribute(b + "/d/plain", "user.test.layout") == nil)
            #expect(try attribute(b + "/d/wide", "user.other") == "kept")
            #expect(try attribute(b + "/d", "user.test.layout") == nil)
            for file in ["wide", "sub/narrow", "plain"] {
                #expect(FileManager.default.contentsEqual(atPath: "\(a)/d/\(file)", andPath: "\(b)/d/\(file)"), "\(file)")
            }
            // Within one filesystem, directories keep theirs (copied as it is, not by the cloner).
            let c = try fs.makeProjectDirectory("c", project: 3)
            var cloner = AttributeLayoutCloner(calls: calls)
            cloner.directoryLayouts = true
            _ = try engineCopy(a, "d", to: c, options: CopyOptions(jobs: 2, layoutCloner: cloner, requireXattrs: true))
            #expect(try attribute(c + "/d", "user.test.layout") == "default: 8 stripes")
            #expect(try attribute(c + "/d/sub", "user.test.layout") == nil)
            #expect(try attribute(c + "/d/wide", "user.test.layout") == "16 stripes/given before data")
        }
    }

    /// A layout the destination will not take (Lustre: a pool it does not have) loses no data:
    /// the file is copied with its directory's default layout, and the notes say so. Not a
    /// refusal even when attributes are required: a layout places data, it is not the data's.
    @Test func aLayoutThatCannotBeGivenIsNotedAndTheFileCopied() throws {
        try withLoopXFS { fs in
            let a = try fs.makeProjectDirectory("a", project: 1)
            let b = try fs.makeProjectDirectory("b", project: 2)
            try TreeBuilder.write(a + "/file", bytes: 1 << 20)
            try setAttribute(a + "/file", "user.test.layout", "pool: flash")
            let calls = LayoutCalls()
            let cloner = AttributeLayoutCloner(calls: calls, failing: true)
            let report = try engineCopy(a, "file", to: b, options: CopyOptions(jobs: 1, layoutCloner: cloner, requireXattrs: true))
            #expect(calls.all.count == 1)
            #expect(report.noteCount == 1)
            #expect(report.notes.first?.contains("file: layout not preserved (EINVAL: no such OST pool)") == true, "\(report.notes)")
            #expect(FileManager.default.contentsEqual(atPath: a + "/file", andPath: b + "/file"))
            #expect(try attribute(b + "/file", "user.test.layout") == nil)
        }
    }

    /// A directory's default layout the destination refuses is noted, not a failure, even where
    /// attributes are required: the directory takes the default of where it lands.
    @Test(.enabled(if: QuotaFS.available)) func aRefusedDirectoryLayoutIsNotedNotFatal() throws {
        try withLoopXFS { fs in
            let a = try fs.makeProjectDirectory("a", project: 1)
            let quota = try QuotaFS(budget: 1 << 30, refuseXattrs: true)
            defer { quota.tearDown() }
            try FileManager.default.createDirectory(atPath: a + "/d", withIntermediateDirectories: true)
            try TreeBuilder.write(a + "/d/file", bytes: 4096)
            try setAttribute(a + "/d", "user.test.layout", "default: 2 stripes")
            var cloner = AttributeLayoutCloner(calls: LayoutCalls())
            cloner.directoryLayouts = true
            let report = try engineCopy(a, "d", to: quota.mountPoint, options: CopyOptions(jobs: 1, layoutCloner: cloner, requireXattrs: true))
            #expect(report.notes.contains { $0.hasPrefix("d: default layout not preserved (EOPNOTSUPP)") }, "\(report.notes)")
            #expect(FileManager.default.contentsEqual(atPath: a + "/d/file", andPath: quota.mountPoint + "/d/file"))
        }
    }

    /// What Lustre lists about an inode itself (FID, link parents, size on MDT, HSM state) and its
    /// layout are never copied where no cloner takes the layout: they would be wrong for the copy,
    /// or refused by a filesystem that is not Lustre, failing a move of every file. Any other
    /// trusted attribute is still copied. (XFS keeps trusted.* for root, so a source can carry them.)
    @Test func lustresOwnAttributesAreNotCopiedElsewhere() throws {
        try withLoopXFS { fs in
            let a = try fs.makeProjectDirectory("a", project: 1)
            let b = try fs.makeProjectDirectory("b", project: 2)
            let c = try fs.makeProjectDirectory("c", project: 3)
            try FileManager.default.createDirectory(atPath: a + "/d", withIntermediateDirectories: true)
            try TreeBuilder.write(a + "/d/file", bytes: 4096)
            let lustre = ["trusted.lma", "trusted.link", "trusted.som", "trusted.hsm", "trusted.lov"]
            for path in [a + "/d", a + "/d/file"] {
                for name in lustre { try setAttribute(path, name, "from the source's MDT") }
                try setAttribute(path, "trusted.keep", "mine")
            }
            let report = try engineCopy(a, "d", to: b, options: CopyOptions(jobs: 1, requireXattrs: true))
            #expect(report.noteCount == 0, "\(report.notes)")
            for path in [b + "/d", b + "/d/file"] {
                for name in lustre { #expect(try attribute(path, name) == nil, "\(path) \(name)") }
                #expect(try attribute(path, "trusted.keep") == "mine")
            }
            // Where a cloner takes `trusted.lov` (a Lustre destination), a file gets it from the
            // cloner alone; a directory not at all; the inode's own attributes never.
            struct TrustedLov: LayoutCloner {
                var layoutAttributeNames: Set<ByteString> { [Array("trusted.lov".utf8)] }
                func cloneLayout(from source: FileDescriptor, to destination: FileDescriptor) throws {}
            }
            _ = try engineCopy(a, "d", to: c, options: CopyOptions(jobs: 1, layoutCloner: TrustedLov(), requireXattrs: true))
            #expect(try attribute(c + "/d", "trusted.lov") == nil)
            #expect(try attribute(c + "/d", "trusted.keep") == "mine")
            #expect(try attribute(c + "/d/file", "trusted.lov") == nil)
            #expect(try attribute(c + "/d", "trusted.lma") == nil)
        }
    }
}
