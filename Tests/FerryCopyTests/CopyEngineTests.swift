import Foundation
@testable import FerryCopy
@testable import FerrySystem
import FerryTestSupport
import Glibc
import Testing

func openDir(_ path: String) throws -> FileDescriptor { try FileDescriptor.openDirectory(Array(path.utf8)) }
func entries(_ path: String) throws -> [String] { try FileManager.default.contentsOfDirectory(atPath: path).sorted() }

/// Copies one top-level item with the engine and returns the report.
@discardableResult
func engineCopy(_ parent: String, _ name: String, to destination: String, options: CopyOptions = CopyOptions(jobs: 4), progress: ProgressHandler? = nil) throws -> CopyReport {
    let source = try openDir(parent)
    let target = try openDir(destination)
    defer { source.closeQuietly(); target.closeQuietly() }
    return try CopyEngine(options: options, progress: progress).copy([CopySource(directory: source, name: Array(name.utf8))], to: target)
}

@Suite("Copy engine on loop XFS (root)", .enabled(if: Environment.canMountXFS), .serialized)
struct CopyEngineTests {
    /// The issue's fidelity tree: a 1 GiB file, a 1 GiB sparse file with 2 MiB of data, hard links,
    /// symlinks (one dangling), xattrs, an ACL, a fifo, a device node, a non-UTF-8 name, a 255-byte
    /// name, an empty directory, a read-only directory, setuid and foreign owners, 10,000 small files.
    @Test func fidelityAcrossProjects() throws {
        try withLoopXFS(sizeMiB: 3200) { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            let t = a + "/tree"
            let fm = FileManager.default
            for dir in ["", "/empty", "/links", "/small", "/ro", "/deep/er/still"] { try fm.createDirectory(atPath: t + dir, withIntermediateDirectories: true) }
            try Shell.run(["dd", "if=/dev/urandom", "of=\(t)/huge", "bs=4M", "count=256", "status=none"])
            try TreeBuilder.sparse(t + "/sparse", size: 1 << 30, dataBytes: 2 << 20, at: 300 << 20)
            try TreeBuilder.write(t + "/links/original", bytes: 100_000, seed: 7)
            try fm.linkItem(atPath: t + "/links/original", toPath: t + "/links/second")
            try fm.linkItem(atPath: t + "/links/original", toPath: t + "/deep/er/third")
            try fm.createSymbolicLink(atPath: t + "/links/relative", withDestinationPath: "original")
            try fm.createSymbolicLink(atPath: t + "/links/dangling", withDestinationPath: "/does/not/exist")
            try Shell.run(["setfattr", "-n", "user.note", "-v", "0x00ff10", t + "/links/original"])
            try Shell.run(["setfattr", "-n", "trusted.secret", "-v", "root", t + "/links/original"])
            try Shell.run(["setfacl", "-m", "u:nobody:rwx", "-m", "d:u:nobody:rx", t + "/deep"])
            try Shell.run(["mkfifo", t + "/fifo"])
            try Shell.run(["mknod", t + "/null", "c", "1", "3"])
            let weird = Array(t.utf8) + Array("/caf\u{e9}-".utf8) + [0xFF, 0xC3, 0x28]
            let weirdFD = try currentWorkingDirectory.openAt(weird, [.writeOnly, .create])
            weirdFD.closeQuietly()
            try TreeBuilder.write(t + "/" + String(repeating: "n", count: 255), bytes: 10)
            for i in 0..<10_000 {
                _ = fm.createFile(atPath: "\(t)/small/f\(i)", contents: Data("file \(i)\n".utf8))
            }
            try TreeBuilder.write(t + "/ro/inside", bytes: 5)
            try TreeBuilder.write(t + "/setuid", bytes: 5)
            try Shell.run(["chmod", "4755", t + "/setuid"])
            try Shell.run(["chown", "65534:65534", t + "/setuid", t + "/small/f1"])
            try Shell.run(["chmod", "0555", t + "/ro"])
            try Shell.run(["touch", "-h", "-d", "2001-02-03 04:05:06.123456789", t + "/links/relative"])
            try Shell.run(["touch", "-d", "1999-12-31 23:59:59.987654321", t + "/empty"])

            let before = try TreeSnapshot.take(t)
            let report = try engineCopy(a, "tree", to: b)
            #expect(report.measurement.files == 10_000 + 9)
            #expect(report.measurement.sparseFiles == 1)
            #expect(report.measurement.extraHardLinks == 2)

            let copy = try TreeSnapshot.take(b + "/tree")
            let differences = before.differences(to: copy)
            #expect(differences.isEmpty, "\(differences.prefix(5))")
            #expect(before.entries.count == 10_000 + 21)  // 8 directories (root included) + 13 others
            // Sparse stays sparse: a few MiB allocated for a 1 GiB file.
            let sparse = try #require(copy.entries[Array("sparse".utf8)])
            #expect(sparse.size == 1 << 30 && sparse.blocks * 512 < 4 << 20)
            // The source is untouched and still in its project; every copied entry inherited 200.
            #expect(try TreeSnapshot.take(t).differences(to: before).isEmpty)
            #expect(try openDir(t).projectAttributes().projectID == 100)
            for (path, entry) in copy.entries where entry.kind == "file" || entry.kind == "directory" {
                let full = Array((b + "/tree").utf8) + (path.isEmpty ? [] : [0x2F] + path)
                let fd = try currentWorkingDirectory.openAt(full, [.nonBlocking, .noFollow])
                defer { fd.closeQuietly() }
                #expect(try fd.projectAttributes().projectID == 200, "\(PathDisplay.string(path))")
            }
            #expect(try entries(b) == ["tree"])  // no staging directory left behind
        }
    }

    @Test func noSpaceStopsCleanlyAndRemovesEverything() throws {
        try withLoopXFS(sizeMiB: 300) { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try FileManager.default.createDirectory(atPath: a + "/data", withIntermediateDirectories: true)
            for i in 0..<4 { try Shell.run(["dd", "if=/dev/urandom", "of=\(a)/data/f\(i)", "bs=1M", "count=25", "status=none"]) }
            let free = try openDir(fs.mountPoint).filesystemStatistics().availableBytes
            try Shell.run(["fallocate", "-l", String(free - (40 << 20)), fs.mountPoint + "/filler"])
            let before = try TreeSnapshot.take(a)
            let error = #expect(throws: CopyError.self) { try engineCopy(a, "data", to: b) }
            #expect(error?.systemCode == .noSpace, "\(String(describing: error))")
            #expect(error?.description.contains("full") == true)
            #expect(try entries(b).isEmpty)
            #expect(try TreeSnapshot.take(a).differences(to: before).isEmpty)
        }
    }

    @Test func cancellationRemovesWhatWasCreated() throws {
        try withLoopXFS { fs in
            let a = try fs.makeProjectDirectory("a", project: 1)
            let b = try fs.makeProjectDirectory("b", project: 2)
            try FileManager.default.createDirectory(atPath: a + "/data", withIntermediateDirectories: true)
            for i in 0..<8 { try Shell.run(["dd", "if=/dev/zero", "of=\(a)/data/f\(i)", "bs=1M", "count=20", "status=none"]) }
            let flag = CancellationFlag()
            let options = CopyOptions(jobs: 2, progressInterval: .milliseconds(1), cancellation: flag)
            let error = #expect(throws: CopyError.self) {
                try engineCopy(a, "data", to: b, options: options) { progress in
                    if progress.phase == .copying && progress.bytesDone > 0 { flag.cancel() }
                }
            }
            guard case .cancelled? = error else { Issue.record("expected cancelled, got \(String(describing: error))"); return }
            #expect(try entries(b).isEmpty)
            #expect(try entries(a + "/data").count == 8)
        }
    }

    /// A source appended to while it is copied: the per-file check after the data copy sees it.
    @Test func sourceWrittenDuringCopyIsDetected() throws {
        struct Appender: LayoutCloner {
            let path: String
            var layoutAttributeNames: Set<ByteString> { [] }
            func cloneLayout(from source: FileDescriptor, to destination: FileDescriptor) throws {
                let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
                try handle.seekToEnd()
                try handle.write(contentsOf: Data("more".utf8))
                try handle.close()
            }
        }
        try withLoopXFS { fs in
            let a = try fs.makeProjectDirectory("a", project: 1)
            let b = try fs.makeProjectDirectory("b", project: 2)
            try TreeBuilder.write(a + "/file", bytes: 1 << 20)
            let options = CopyOptions(jobs: 1, layoutCloner: Appender(path: a + "/file"))
            let error = #expect(throws: CopyError.self) { try engineCopy(a, "file", to: b, options: options) }
            guard case .sourceChanged(let path, _)? = error else { Issue.record("got \(String(describing: error))"); return }
            #expect(path == "file")
            #expect(try entries(b).isEmpty)
        }
    }

    /// A source touched after its file was copied but before verification.
    @Test func sourceChangedBeforeVerifyIsDetected() throws {
        try withLoopXFS { fs in
            let a = try fs.makeProjectDirectory("a", project: 1)
            let b = try fs.makeProjectDirectory("b", project: 2)
            try FileManager.default.createDirectory(atPath: a + "/d", withIntermediateDirectories: true)
            for i in 0..<20 { try TreeBuilder.write("\(a)/d/f\(i)", bytes: 1000) }
            let engine = CopyEngine(options: CopyOptions(jobs: 2))
            let source = try openDir(a), target = try openDir(b)
            defer { source.closeQuietly(); target.closeQuietly() }
            let sources = [CopySource(directory: source, name: Array("d".utf8))]
            let staging = try engine.createStaging(in: target, id: "t1")
            // Marked as Ferry's, for this id (the janitor removes nothing else).
            #expect(StagingArea.marking(of: staging.directory, in: target, id: "t1") == .copies)
            #expect(StagingArea.marking(of: staging.directory, in: target, id: "t2") == .unmarked)
            // …made in this directory: seen as an entry of another, it is not the mark of this one.
            #expect(StagingArea.marking(of: staging.directory, in: source, id: "t1") == .unmarked)
            // The mark of earlier releases (the id alone) is still read, so that what they staged is resumed.
            try ExtendedAttributes.set(staging.directory, StagingArea.markerAttribute, Array("t1".utf8))
            #expect(StagingArea.marking(of: staging.directory, in: source, id: "t1") == .copies)
            try ExtendedAttributes.set(staging.directory, StagingArea.markerAttribute, Array("relink t1".utf8))
            #expect(StagingArea.marking(of: staging.directory, in: source, id: "t1") == .relinked)
            try ExtendedAttributes.set(staging.directory, StagingArea.markerAttribute,
                                       StagingArea.markValue(id: "t1", relink: false, parent: try target.status()))
            _ = try engine.stage(sources, into: staging)
            usleep(20_000)
            try Shell.run(["chmod", "600", a + "/d/f7"])
            let error = #expect(throws: CopyError.self) { try engine.verify(sources, in: staging) }
            guard case .sourceChanged(let path, _)? = error else { Issue.record("got \(String(describing: error))"); return }
            #expect(path == "d/f7")
            engine.discard(staging)
            #expect(try entries(b).isEmpty)
        }
    }

    @Test func verificationFindsEveryKindOfTampering() throws {
        try withLoopXFS { fs in
            let a = try fs.makeProjectDirectory("a", project: 1)
            let b = try fs.makeProjectDirectory("b", project: 2)
            let t = a + "/d"
            try FileManager.default.createDirectory(atPath: t + "/sub", withIntermediateDirectories: true)
            for name in ["mode", "gone", "content", "sub/x"] { try TreeBuilder.write("\(t)/\(name)", bytes: 4096, seed: 3) }
            try TreeBuilder.sparse(t + "/sparse", size: 64 << 20, dataBytes: 1 << 20, at: 0)
            for twin in ["twin1", "twin2"] { try TreeBuilder.write("\(t)/\(twin)", bytes: 4096, seed: 5) }
            try Shell.run(["touch", "-d", "2020-01-01 00:00:00.5", t + "/twin1", t + "/twin2"])
            let engine = CopyEngine(options: CopyOptions(jobs: 2))
            let source = try openDir(a), target = try openDir(b)
            defer { source.closeQuietly(); target.closeQuietly() }
            let sources = [CopySource(directory: source, name: Array("d".utf8))]
            let staging = try engine.createStaging(in: target, id: "t2")
            _ = try engine.stage(sources, into: staging)
            let s = b + "/.ferry-staging-t2/d"
            // Metadata verification passes on an untouched copy.
            try engine.verify(sources, in: staging)
            // A flipped byte with size and mtime kept: only a checksum finds it.
            try Shell.run(["dd", "if=/dev/zero", "of=\(s)/content", "bs=1", "count=1", "seek=100", "conv=notrunc", "status=none"])
            try Shell.run(["touch", "-r", "\(t)/content", "\(s)/content"])
            try engine.verify(sources, in: staging)
            let checksum = CopyEngine(options: CopyOptions(jobs: 2, verify: .checksum))
            let byChecksum = #expect(throws: CopyError.self) { try checksum.verify(sources, in: staging) }
            guard case .verificationFailed(let found)? = byChecksum else { Issue.record("got \(String(describing: byChecksum))"); return }
            #expect(found.map(\.path) == ["d/content"])
            // Now metadata-level damage.
            try Shell.run(["chmod", "0600", "\(s)/mode"])
            try FileManager.default.removeItem(atPath: "\(s)/gone")
            try TreeBuilder.write("\(s)/sub/extra", bytes: 1)
            try Shell.run(["touch", "-r", "\(t)/sub", "\(s)/sub"])
            try Shell.run(["dd", "if=/dev/zero", "of=\(s)/sparse", "bs=1M", "count=64", "conv=notrunc", "status=none"])
            try Shell.run(["touch", "-r", "\(t)/sparse", "\(s)/sparse"])
            // Two separate source files that became one inode in the copy: same data, same metadata.
            try FileManager.default.removeItem(atPath: "\(s)/twin2")
            try FileManager.default.linkItem(atPath: "\(s)/twin1", toPath: "\(s)/twin2")
            try Shell.run(["touch", "-r", t, s])
            let error = #expect(throws: CopyError.self) { try engine.verify(sources, in: staging) }
            guard case .verificationFailed(let differences)? = error else { Issue.record("got \(String(describing: error))"); return }
            let paths = Set(differences.map(\.path))
            #expect(paths.isSuperset(of: ["d/mode", "d/gone", "d/sub", "d/sparse"]), "\(differences)")
            #expect(paths.contains("d/twin1") || paths.contains("d/twin2"), "\(differences)")
            #expect(error?.description.contains("nothing was published") == true)
            engine.discard(staging)
            #expect(try entries(b).isEmpty)
        }
    }

    @Test func publishNeverReplaces() throws {
        try withLoopXFS { fs in
            let a = try fs.makeProjectDirectory("a", project: 1)
            let b = try fs.makeProjectDirectory("b", project: 2)
            try TreeBuilder.write(a + "/f", bytes: 10, seed: 1)
            let engine = CopyEngine(options: CopyOptions(jobs: 1))
            let source = try openDir(a), target = try openDir(b)
            defer { source.closeQuietly(); target.closeQuietly() }
            let sources = [CopySource(directory: source, name: Array("f".utf8))]
            let staging = try engine.createStaging(in: target, id: "t3")
            _ = try engine.stage(sources, into: staging)
            try TreeBuilder.write(b + "/f", bytes: 3, seed: 9)  // someone else wrote the name meanwhile
            let error = #expect(throws: CopyError.self) { try engine.publish(sources, from: staging) }
            guard case .destinationExists? = error else { Issue.record("got \(String(describing: error))"); return }
            #expect(try Data(contentsOf: URL(fileURLWithPath: b + "/f")).count == 3)
            #expect(try entries(b) == ["f"])
            // And a whole copy to a taken name is refused before anything is written.
            #expect(throws: CopyError.self) { try engineCopy(a, "f", to: b) }
            #expect(try entries(b) == ["f"])
        }
    }

    @Test func singleFileToNewNameWithProgress() throws {
        try withLoopXFS { fs in
            let a = try fs.makeProjectDirectory("a", project: 1)
            let b = try fs.makeProjectDirectory("b", project: 2)
            try TreeBuilder.write(a + "/f", bytes: 5 << 20, seed: 4)
            let snapshots = Locked<[CopyProgress]>([])
            let source = try openDir(a), target = try openDir(b)
            defer { source.closeQuietly(); target.closeQuietly() }
            let engine = CopyEngine(options: CopyOptions(jobs: 2)) { p in snapshots.withLock { $0.append(p) } }
            let report = try engine.copy([CopySource(directory: source, name: Array("f".utf8), destinationName: Array("renamed".utf8))], to: target)
            #expect(report.published == [Array("renamed".utf8)])
            #expect(FileManager.default.contentsEqual(atPath: a + "/f", andPath: b + "/renamed"))
            let last = try #require(snapshots.withLock { $0.last(where: { $0.phase == .copying }) })
            #expect(last.bytesDone == 5 << 20 && last.bytesTotal == 5 << 20)
            #expect(last.entriesDone == 1 && last.entriesTotal == 1)
        }
    }

    /// Many links to one inode, found by parallel copiers in many directories, stay one inode.
    @Test func hardLinksUnderParallelCopiers() throws {
        try withLoopXFS { fs in
            let a = try fs.makeProjectDirectory("a", project: 1)
            let b = try fs.makeProjectDirectory("b", project: 2)
            let fm = FileManager.default
            try fm.createDirectory(atPath: a + "/t/d0", withIntermediateDirectories: true)
            try TreeBuilder.write(a + "/t/d0/origin", bytes: 3 << 20)
            for d in 0..<20 {
                try fm.createDirectory(atPath: "\(a)/t/d\(d)", withIntermediateDirectories: true)
                for l in 0..<10 { try fm.linkItem(atPath: a + "/t/d0/origin", toPath: "\(a)/t/d\(d)/link\(l)") }
            }
            try engineCopy(a, "t", to: b, options: CopyOptions(jobs: 8))
            var inode: UInt64?
            for d in 0..<20 {
                for l in 0..<10 {
                    let attributes = try fm.attributesOfItem(atPath: "\(b)/t/d\(d)/link\(l)")
                    let number = (attributes[.systemFileNumber] as? NSNumber)?.uint64Value
                    if inode == nil { inode = number }
                    #expect(number == inode)
                    #expect((attributes[.referenceCount] as? NSNumber)?.intValue == 201)
                }
            }
        }
    }

    /// Relinking empties each source directory, which changes its times. A relinked tree, resumed
    /// after a stop, still gets each directory's own mode, owner, attributes and times, and carries
    /// nothing of Ferry's;
    /// putting it back restores the skeleton's times and leaves the rest of each directory alone,
    /// and a directory removed meanwhile is made again as it was.
    @Test func relinkAndBackKeepEveryDirectorysMetadata() throws {
        try withLoopXFS { fs in
            let a = fs.mountPoint + "/a", b = fs.mountPoint + "/b", t = a + "/d"
            try FileManager.default.createDirectory(atPath: t + "/sub/deeper", withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: b, withIntermediateDirectories: true)
            // `x` before `y` in `sub`'s listing (a small XFS directory lists in creation order).
            for name in ["top", "sub/deeper/z", "sub/x", "sub/y"] { try TreeBuilder.write("\(t)/\(name)", bytes: 512, seed: 9) }
            try Shell.run(["chmod", "0750", t + "/sub"])
            try Shell.run(["chmod", "1777", t + "/sub/deeper"])
            try Shell.run(["chown", "4321:4322", t + "/sub", t + "/sub/deeper"])
            try Shell.run(["setfattr", "-n", "user.note", "-v", "kept", t + "/sub/deeper"])
            for directory in [t, t + "/sub", t + "/sub/deeper"] {
                try Shell.run(["touch", "-h", "-d", "2019-03-04 05:06:07.891011121", directory])
            }
            let original = try TreeSnapshot.take(t)
            let source = try openDir(a), target = try openDir(b)
            defer { source.closeQuietly(); target.closeQuietly() }
            let sources = [CopySource(directory: source, name: Array("d".utf8))]
            // A first relink stopped part-way, with `sub` half emptied: `y`, immutable, cannot be
            // renamed, and stops it (one thread, so `x` has gone by then). A second one finishes it.
            try Shell.run(["chattr", "+i", t + "/sub/y"])
            let engine = CopyEngine(options: CopyOptions(jobs: 1))
            let staging = try engine.createStaging(in: target, id: "r1", relink: true)
            let stopped = #expect(throws: CopyError.self) { try engine.relink(sources, into: staging) }
            #expect(stopped?.systemCode == .notPermitted, "\(String(describing: stopped))")
            #expect(try entries(t + "/sub").contains("y"))
            try Shell.run(["chattr", "-i", t + "/sub/y"])
            try engine.relink(sources, into: staging)
            let relinked = b + "/" + PathDisplay.string(staging.name) + "/d"
            var differences = original.differences(to: try TreeSnapshot.take(relinked))
            #expect(differences.isEmpty, "\(differences)")
            // The emptied skeleton: its times are now those of the renames.
            #expect(try TreeSnapshot.take(t).entries[Array("sub".utf8)]?.mtimeSeconds != original.entries[Array("sub".utf8)]?.mtimeSeconds)
            try FileManager.default.removeItem(atPath: t + "/sub/deeper")
            try engine.unrelink(sources, from: staging)
            differences = original.differences(to: try TreeSnapshot.take(t))
            #expect(differences.isEmpty, "\(differences)")
            #expect(try entries(b).isEmpty)
        }
    }

    /// The moments between a step and the record of it. A staging directory made by an attempt
    /// stopped before it recorded its origin is empty, so the source is as it was: its times are
    /// the ones published. A source directory that a rollback made again and that an interrupted
    /// rollback left unfinished is finished as the source was by the next one. A staged directory
    /// whose source directory was removed between attempts, never finished, is found.
    @Test func relinkOriginsSurviveInterruptionsBetweenSteps() throws {
        try withLoopXFS { fs in
            let a = fs.mountPoint + "/a", b = fs.mountPoint + "/b", t = a + "/d"
            try FileManager.default.createDirectory(atPath: t + "/sub/deeper", withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: b, withIntermediateDirectories: true)
            for name in ["top", "sub/x", "sub/deeper/z"] { try TreeBuilder.write("\(t)/\(name)", bytes: 512, seed: 4) }
            try Shell.run(["chmod", "0751", t + "/sub"])
            try Shell.run(["chmod", "0750", t + "/sub/deeper"])
            try Shell.run(["chown", "4321:4322", t + "/sub/deeper"])
            for directory in [t, t + "/sub", t + "/sub/deeper"] {
                try Shell.run(["touch", "-h", "-d", "2018-01-02 03:04:05.060708090", directory])
            }
            let original = try TreeSnapshot.take(t)
            let engine = CopyEngine(options: CopyOptions(jobs: 2))
            let source = try openDir(a), target = try openDir(b)
            defer { source.closeQuietly(); target.closeQuietly() }
            let sources = [CopySource(directory: source, name: Array("d".utf8))]
            let staging = try engine.createStaging(in: target, id: "r2", relink: true)
            let staged = b + "/" + PathDisplay.string(staging.name) + "/d"
            // Stopped just after making the staging directory of `d`, before recording its origin.
            try FileManager.default.createDirectory(atPath: staged, withIntermediateDirectories: false)
            try engine.relink(sources, into: staging)
            var differences = original.differences(to: try TreeSnapshot.take(staged))
            #expect(differences.isEmpty, "\(differences)")
            let stagedSet = [CopySource(directory: staging.directory, name: Array("d".utf8))]
            #expect(try engine.unfinishedRelinkedDirectories(stagedSet).isEmpty)
            // A rollback that made `sub/deeper` again (it had been removed from the skeleton) and
            // was stopped before leaving it: made at 0700, marked with the staged directory's origin.
            try FileManager.default.removeItem(atPath: t + "/sub/deeper")
            try FileManager.default.createDirectory(atPath: t + "/sub/deeper", withIntermediateDirectories: false)
            chmod(t + "/sub/deeper", 0o700)
            let remade = try openDir(t + "/sub/deeper"), stagedDeeper = try openDir(staged + "/sub/deeper")
            try DirectoryOrigin(try stagedDeeper.status()).record(on: remade)
            remade.closeQuietly(); stagedDeeper.closeQuietly()
            try engine.unrelink(sources, from: staging)
            differences = original.differences(to: try TreeSnapshot.take(t))
            #expect(differences.isEmpty, "\(differences)")
            // The same remade directory, but the task resumed forward instead: it is published as
            // the source was, not as the rollback had made it.
            let forward = try engine.createStaging(in: target, id: "r4", relink: true)
            try engine.relink(sources, into: forward)
            try FileManager.default.removeItem(atPath: t + "/sub/deeper")
            try FileManager.default.createDirectory(atPath: t + "/sub/deeper", withIntermediateDirectories: false)
            chmod(t + "/sub/deeper", 0o700)
            let remadeAgain = try openDir(t + "/sub/deeper")
            let forwardDeeper = b + "/" + PathDisplay.string(forward.name) + "/d/sub/deeper"
            let stagedForward = try openDir(forwardDeeper)
            try DirectoryOrigin(try stagedForward.status()).record(on: remadeAgain)
            stagedForward.closeQuietly()
            // Its staged copy unfinished, and back in the source, as a rollback stopped part-way leaves it.
            try FileManager.default.moveItem(atPath: forwardDeeper + "/z", toPath: t + "/sub/deeper/z")
            remadeAgain.closeQuietly()
            try engine.relink(sources, into: forward)
            differences = original.differences(to: try TreeSnapshot.take(b + "/" + PathDisplay.string(forward.name) + "/d"))
            #expect(differences.isEmpty, "\(differences)")
            try engine.unrelink(sources, from: forward)
            // Relinked again, but `sub/deeper` left unfinished: it is found, by its path.
            let again = try engine.createStaging(in: target, id: "r3", relink: true)
            try engine.relink(sources, into: again)
            let unfinished = try openDir(b + "/" + PathDisplay.string(again.name) + "/d/sub/deeper")
            try DirectoryOrigin(try unfinished.status()).record(on: unfinished)
            unfinished.closeQuietly()
            #expect(try engine.unfinishedRelinkedDirectories([CopySource(directory: again.directory, name: Array("d".utf8))]) == ["d/sub/deeper"])
            try engine.unrelink(sources, from: again)
        }
    }

    /// A directory of 50,000 entries is walked with a bounded number of pending items.
    @Test func walkMemoryIsBounded() throws {
        try withLoopXFS { fs in
            let flat = fs.mountPoint + "/flat"
            try FileManager.default.createDirectory(atPath: flat, withIntermediateDirectories: true)
            let dir = try openDir(flat)
            defer { dir.closeQuietly() }
            for i in 0..<50_000 { try dir.makeDirectory(Array("e\(i)".utf8)) }
            let root = try openDir(fs.mountPoint)
            defer { root.closeQuietly() }
            let visitor = MeasureVisitor()
            let walk = WalkCoordinator(visitor: visitor, cancellation: CancellationFlag())
            try walk.run(root: root, peer: nil, entries: [WalkEntry(name: Array("flat".utf8), peerName: Array("flat".utf8), kind: .directory)], threads: 4)
            #expect(visitor.result.directories == 50_001)
            #expect(walk.peakPendingItems <= 2 * walk.batchSize + 8, "peak \(walk.peakPendingItems)")
        }
    }
}

/// How many of a file's pages are in the page cache (`mincore` over a mapping of it).
func residentPages(_ path: String) throws -> Int {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { throw POSIXError(.init(rawValue: errno)!) }
    defer { close(fd) }
    var status = stat()
    fstat(fd, &status)
    let size = Int(status.st_size)
    guard let map = mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0), map != MAP_FAILED else { throw POSIXError(.init(rawValue: errno)!) }
    defer { munmap(map, size) }
    let pages = (size + 4095) / 4096
    var vector = [UInt8](repeating: 0, count: pages)
    guard mincore(map, size, &vector) == 0 else { throw POSIXError(.init(rawValue: errno)!) }
    return vector.filter { $0 & 1 != 0 }.count
}

@Suite("Source page cache")
struct SourceCacheTests {
    /// A move's copy drops each source file's cached pages once its data is copied: the source is
    /// about to go. (The data was just read through the cache, so without the drop it is resident.)
    @Test func moveDropsTheSourcesCachedPages() throws {
        let root = NSTemporaryDirectory() + "ferry-cache-\(getpid())"
        try FileManager.default.createDirectory(atPath: root + "/src", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: root + "/kept", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: root + "/dropped", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        try TreeBuilder.write(root + "/src/file", bytes: 8 << 20)
        _ = try Data(contentsOf: URL(fileURLWithPath: root + "/src/file"))  // read it: cached
        #expect(try residentPages(root + "/src/file") > 1000)
        _ = try engineCopy(root + "/src", "file", to: root + "/dropped", options: CopyOptions(jobs: 1, allowClone: false, dropSourceCache: true))
        #expect(try residentPages(root + "/src/file") == 0)
        #expect(try Data(contentsOf: URL(fileURLWithPath: root + "/dropped/file")) == Data(contentsOf: URL(fileURLWithPath: root + "/src/file")))
    }
}

/// Records how many threads are visiting files at once: in each directory, and anywhere.
final class ConcurrencyProbe: TreeVisitor, @unchecked Sendable {
    let visitsFilesWhereListed: Bool
    let movesFileData: Bool
    private let lock = NSLock()
    private var active: [String: Int] = [:]
    private var activeAnywhere = 0
    private(set) var peakInOneDirectory = 0
    private(set) var peak = 0
    private(set) var visited: [String] = []

    init(inline: Bool, movesFileData: Bool = false) {
        visitsFilesWhereListed = inline
        self.movesFileData = movesFileData
    }

    func visit(_ entry: WalkEntry, in directory: WalkDirectory) throws -> VisitOutcome {
        // The walk's top-level entries may come with an unknown kind.
        if try directory.source.status(entry.name).kind == .directory { return .descend(peer: nil) }
        let key = String(decoding: directory.relativePath, as: UTF8.self)
        lock.withLock {
            active[key, default: 0] += 1
            activeAnywhere += 1
            peakInOneDirectory = max(peakInOneDirectory, active[key]!)
            peak = max(peak, activeAnywhere)
            visited.append(key + "/" + String(decoding: entry.name, as: UTF8.self))
        }
        usleep(300)  // long enough for the other threads to come in, if they may
        lock.withLock {
            active[key]! -= 1
            activeAnywhere -= 1
        }
        return .done
    }

    func leave(_ directory: WalkDirectory) throws {}
}

@Suite("Walk: files visited where listed")
struct WalkPlacementTests {
    /// Removal unlinks under the directory's lock: its visitor has each directory's files done by
    /// the thread that listed them, while threads spread over directories. Every entry is still
    /// visited exactly once. The default hands each file to any thread.
    /// ROOT/tree: six directories of 300 empty files and a subdirectory with one.
    static func makeTree(_ root: String) throws {
        for d in 0..<6 {
            try FileManager.default.createDirectory(atPath: "\(root)/tree/d\(d)/sub", withIntermediateDirectories: true)
            for f in 0..<300 { FileManager.default.createFile(atPath: "\(root)/tree/d\(d)/f\(f)", contents: Data()) }
            FileManager.default.createFile(atPath: "\(root)/tree/d\(d)/sub/x", contents: Data())
        }
    }

    @Test func filesStayWithTheThreadThatListedThem() throws {
        let root = NSTemporaryDirectory() + "ferry-walk-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: root) }
        try Self.makeTree(root)
        let top = try openDir(root)
        defer { top.closeQuietly() }
        let name = Array("tree".utf8)
        let inline = ConcurrencyProbe(inline: true)
        try WalkCoordinator(visitor: inline, cancellation: CancellationFlag(), batchSize: 64)
            .run(root: top, peer: nil, entries: [WalkEntry(name: name, peerName: name, kind: .directory)], threads: 4)
        #expect(inline.visited.count == 6 * 301 && Set(inline.visited).count == 6 * 301)
        #expect(inline.peakInOneDirectory == 1)

        let anywhere = ConcurrencyProbe(inline: false)
        try WalkCoordinator(visitor: anywhere, cancellation: CancellationFlag(), batchSize: 64)
            .run(root: top, peer: nil, entries: [WalkEntry(name: name, peerName: name, kind: .directory)], threads: 4)
        #expect(Set(anywhere.visited) == Set(inline.visited))
        #expect(anywhere.peakInOneDirectory > 1, "the default spreads one directory's files over threads")
    }

    /// A walk stops at its first failure: the thread visiting a directory's files where it listed
    /// them visits no more of them, as the pool drops the entries still queued.
    @Test func aFailureStopsTheFilesVisitedWhereListed() throws {
        final class FailsFirst: TreeVisitor, @unchecked Sendable {
            let visitsFilesWhereListed = true
            private let lock = NSLock()
            private(set) var visits = 0
            func visit(_ entry: WalkEntry, in directory: WalkDirectory) throws -> VisitOutcome {
                if entry.kind == .directory { return .descend(peer: nil) }
                let first = lock.withLock { visits += 1; return visits == 1 }
                if first { throw SystemError(errno: EACCES, syscall: "unlinkat", path: "first") }
                return .done
            }
            func leave(_ directory: WalkDirectory) throws {}
        }
        let root = NSTemporaryDirectory() + "ferry-walk-fail-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: root) }
        try FileManager.default.createDirectory(atPath: root + "/tree", withIntermediateDirectories: true)
        for f in 0..<300 { FileManager.default.createFile(atPath: "\(root)/tree/f\(f)", contents: Data()) }
        let top = try openDir(root)
        defer { top.closeQuietly() }
        let visitor = FailsFirst()
        let name = Array("tree".utf8)
        #expect(throws: WalkFailure.self) {
            try WalkCoordinator(visitor: visitor, cancellation: CancellationFlag(), batchSize: 64)
                .run(root: top, peer: nil, entries: [WalkEntry(name: name, peerName: name, kind: .directory)], threads: 4)
        }
        #expect(visitor.visits == 1)
    }
}

@Suite("Walk: threads")
struct WalkThreadTests {
    /// Walks that read no file data run on `metadataJobs` threads (one per core unless --jobs is
    /// given); copies and checksums on `jobs`.
    @Test func walksThatMoveNoDataRunOnMetadataJobs() throws {
        let root = NSTemporaryDirectory() + "ferry-walk-threads-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: root) }
        try WalkPlacementTests.makeTree(root)
        let top = try openDir(root)
        defer { top.closeQuietly() }
        let engine = CopyEngine(options: CopyOptions(jobs: 6, metadataJobs: 2))
        let sources = [CopySource(directory: top, name: Array("tree".utf8))]

        let metadata = ConcurrencyProbe(inline: false)
        try engine.walk(sources, peer: nil, visitor: metadata)
        #expect(metadata.peak == 2)
        let data = ConcurrencyProbe(inline: false, movesFileData: true)
        try engine.walk(sources, peer: nil, visitor: data)
        #expect(data.peak > 2 && data.peak <= 6, "peak \(data.peak)")

        // A local filesystem: one per core; a given number (or --jobs) holds for every walk.
        #expect(!(try top.filesystemStatistics().isNetworked))
        #expect(CopyOptions().metadataJobs(on: top) == CopyOptions.defaultMetadataJobs)
        #expect(CopyOptions.defaultMetadataJobs == Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        #expect(CopyOptions(jobs: 5).metadataJobs(on: top) == 5, "an explicit --jobs holds for every walk")
        #expect(CopyOptions(jobs: 5, metadataJobs: 3).metadataJobs(on: top) == 3)
        // Lustre, NFS and the like wait on a server: their walks get the copiers' threads.
        func on(_ magic: UInt64) -> FilesystemStatistics {
            FilesystemStatistics(magic: magic, blockSize: 4096, totalBlocks: 0, freeBlocks: 0, availableBlocks: 0, totalInodes: 0, freeInodes: 0)
        }
        #expect(on(0x0BD0_0BD0).isNetworked && on(0x6969).isNetworked && on(0xFF53_4D42).isNetworked)
        #expect(!on(0x5846_5342).isNetworked && !on(0xEF53).isNetworked && !on(0x0102_1994).isNetworked)
        #expect(!MeasureVisitor().movesFileData)
        #expect(CopyVisitor(options: CopyOptions(), meter: ProgressMeter(phase: .copying, bytesTotal: 0, entriesTotal: 0, interval: .seconds(1), handler: nil),
                            notes: CopyNotes(), destinationRoot: top).movesFileData)
        let meter = ProgressMeter(phase: .verifying, bytesTotal: 0, entriesTotal: 0, interval: .seconds(1), handler: nil)
        #expect(VerifyVisitor(mode: .checksum, checkOwnership: false, meter: meter, cancellation: CancellationFlag()).movesFileData)
        #expect(!VerifyVisitor(mode: .metadata, checkOwnership: false, meter: meter, cancellation: CancellationFlag()).movesFileData)
    }
}
