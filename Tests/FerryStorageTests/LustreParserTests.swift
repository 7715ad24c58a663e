import Foundation
import FerryStorage
import Testing

// Tests of the `lfs` output parsers on the text in Fixtures/ (see Fixtures/README.md) and on
// inline text rendered from the same lfs.c / liblustreapi.c / lfs_project.c format strings.

private func fixture(_ name: String) throws -> String {
    let base = try #require(Bundle.module.resourceURL)
    return try String(contentsOf: base.appendingPathComponent("Fixtures/\(name)"), encoding: .utf8)
}

private let KiB: UInt64 = 1024
private let TiB: UInt64 = 1 << 40

/// Right-aligns like printf's "%Ns".
private func col(_ s: String, _ width: Int) -> String {
    String(repeating: " ", count: max(0, width - s.count)) + s
}

/// One figures line exactly as lfs.c `print_quota()` prints it (name at "%15s", or alone on
/// its line followed by 15 spaces when longer than 15 characters).
private func quotaLine(_ mnt: String, _ f: [String], bover: Bool = false, iover: Bool = false) -> String {
    let name = mnt.count > 15 ? mnt + "\n" + String(repeating: " ", count: 15) : col(mnt, 15)
    return name + " " + col(f[0], 7) + (bover ? "*" : " ") + " " + col(f[1], 6) + " " + col(f[2], 7) + " "
        + col(f[3], 7) + " " + col(f[4], 7) + (iover ? "*" : " ") + " " + col(f[5], 6) + " " + col(f[6], 7)
        + " " + col(f[7], 7)
}

private let quotaTitle = """
    Disk quotas for prj 1000 (pid 1000):
         Filesystem  kbytes   quota   limit   grace   files   quota   limit   grace
    """

@Suite("lfs quota")
struct LfsQuotaParserTests {
    static let plain = LustreQuotaReport(
        filesystem: "/mnt/lustre", projectID: 1000, bytesUsed: 1_225_350_212 * KiB, bytesSoftLimit: nil,
        bytesHardLimit: 2_147_483_648 * KiB, bytesGrace: .notSet, inodesUsed: 714_982, inodesSoftLimit: nil,
        inodesHardLimit: 1_000_000, inodesGrace: .notSet)

    @Test(arguments: ["lfs_quota_p_v2.15.txt", "lfs_quota_p_v2.17.txt"])
    func plainLayouts(name: String) throws {
        #expect(try LfsQuotaParser.parse(fixture(name)) == Self.plain)
    }

    @Test(arguments: ["lfs_quota_p_q_v2.15.txt", "lfs_quota_p_q_v2.17.txt"])
    func quietLayoutsHaveNoProjectID(name: String) throws {
        var expected = Self.plain
        expected.projectID = nil
        #expect(try LfsQuotaParser.parse(fixture(name)) == expected)
    }

    @Test(arguments: ["lfs_quota_p_h_v2.15.txt", "lfs_quota_p_h_v2.17.txt"])
    func humanReadableLayouts(name: String) throws {
        let report = try LfsQuotaParser.parse(fixture(name))
        var expected = Self.plain
        expected.bytesUsed = UInt64((1.141 * Double(TiB)).rounded())
        expected.bytesSoftLimit = nil  // "0k"
        expected.bytesHardLimit = 2 * TiB  // "2T"
        #expect(report == expected)
        #expect(report.bytesUsed == 1_254_542_767_292)  // round(1.141 * 2^40)
    }

    @Test func overQuota() throws {
        let report = try LfsQuotaParser.parse(fixture("lfs_quota_p_overquota_v2.15.txt"))
        #expect(
            report
                == LustreQuotaReport(
                    filesystem: "/mnt/lustre", projectID: 1000, bytesUsed: 30720 * KiB, bytesSoftLimit: 30720 * KiB,
                    bytesHardLimit: 30920 * KiB, bytesGrace: .remaining(seconds: 6 * 86400 + 23 * 3600 + 56 * 60 + 44),
                    inodesUsed: 10101, inodesSoftLimit: 10000, inodesHardLimit: 11000,
                    inodesGrace: .remaining(seconds: 6 * 86400 + 23 * 3600 + 59 * 60 + 50),
                    bytesOverLimit: true, inodesOverLimit: true, inaccurate: false))
        #expect(!report.bytesGrace.hasRunOut)
    }

    @Test func longFilesystemNameWrapsAndDefaultQuotaLineIsSkipped() throws {
        let mnt = "/lustre/scratch/projects/very_long_mount"
        let text = "Disk quotas for prj 2001 (pid 2001):\n"
            + "     Filesystem  kbytes   quota   limit   grace   files   quota   limit   grace\n"
            + quotaLine(mnt, ["1004", "0", "2048", "-", "2", "0", "0", "-"]) + "\n"
            + "pid 2001 is using default file quota setting\n"
        #expect(text.contains("\(mnt)\n               "))
        let report = try LfsQuotaParser.parse(text)
        #expect(report.filesystem == mnt)
        #expect(report.projectID == 2001)
        #expect(report.bytesUsed == 1004 * KiB)
        #expect(report.bytesHardLimit == 2048 * KiB)
        #expect(report.inodesUsed == 2)
        #expect(report.inodesHardLimit == nil)
    }

    /// A long mount point with a space in it is alone on its line too, whole.
    @Test func aLongNameWithSpacesWrapsWhole() throws {
        let mnt = "/mnt/lustre scratch area"
        let report = try LfsQuotaParser.parse(quotaTitle + "\n" + quotaLine(mnt, ["1004", "0", "2048", "-", "2", "0", "0", "-"]) + "\n")
        #expect(report.filesystem == mnt)
        #expect(report.bytesUsed == 1004 * KiB && report.inodesUsed == 2)
    }

    @Test func bracketsMarkInaccurateFigures() throws {
        let text = quotaTitle + "\n" + quotaLine("/mnt/lustre", ["[123]", "0", "0", "-", "[45]", "0", "0", "-"])
        let report = try LfsQuotaParser.parse(text)
        #expect(report.bytesUsed == 123 * KiB)
        #expect(report.inodesUsed == 45)
        #expect(report.inaccurate)
        let withNote = text + "\nSome errors happened when getting quota info. Some devices may be not working or "
            + "deactivated. The data in \"[]\" is inaccurate.\n"
        #expect(try LfsQuotaParser.parse(withNote).inaccurate)
    }

    @Test func graceForms() throws {
        let text = quotaTitle + "\n"
            + quotaLine("/mnt/lustre", ["40000", "30000", "50000", "none", "7", "5", "0", "1w2d3h4m5s"], bover: true, iover: true)
        let report = try LfsQuotaParser.parse(text)
        #expect(report.bytesGrace == QuotaGrace.none)
        #expect(report.bytesGrace.hasRunOut)
        #expect(report.inodesGrace == .remaining(seconds: 7 * 86400 + 2 * 86400 + 3 * 3600 + 4 * 60 + 5))
        #expect(report.bytesOverLimit && report.inodesOverLimit)
    }

    @Test func humanReadableSuffixesAndExponents() throws {
        let text = "    /mnt/lustre 1.234e+04T   512M   1.5P       -  12       0       0       -"
        let report = try LfsQuotaParser.parse(text)
        #expect(report.bytesUsed == 12340 * TiB)
        #expect(report.bytesSoftLimit == 512 << 20)
        #expect(report.bytesHardLimit == 3 << 49)
        #expect(report.inodesUsed == 12)
    }

    @Test(arguments: [
        "", "   \n\n", "hello world", "garbage",
        "    /mnt/lustre 1225350212       0 2147483648",  // truncated line
        quotaTitle + "\n/a/very/long/mount/point/name\n",  // name with no figures after it
        "    /mnt/lustre 99999999999999999999       0       0       -       1       0       0       -",
        "    /mnt/lustre 18014398509481984       0       0       -       1       0       0       -",  // 2^54 KiB
        "    /mnt/lustre 16384P       0       0       -       1       0       0       -",  // 2^64 bytes
        "    /mnt/lustre      12       0       0       -  1e400       0       0       -",
        "    /mnt/lustre     abc       0       0       -       1       0       0       -",
        "    /mnt/lustre      12       0       0   99999999999999999999d       1       0       0       -",
        "    /mnt/lustre      12       0       0    5x       1       0       0       -",
        "Disk quotas for prj 1 (pid 99999999999):\n    /mnt/lustre 1 0 0 - 1 0 0 -",
        quotaTitle + "\n" + quotaLine("/mnt/lustre", ["1", "0", "0", "-", "1", "0", "0", "-"]) + "\n/mnt/other 1 0 0 - 1 0 0 -",
    ])
    func malformedInputThrows(text: String) {
        let error = #expect(throws: LustreParseError.self) { try LfsQuotaParser.parse(text) }
        #expect(error?.command == "lfs quota")
        #expect(error?.reason.isEmpty == false)
    }

    @Test func errorNamesTheLine() {
        let text = quotaTitle + "\n    /mnt/lustre 12 0"
        let error = #expect(throws: LustreParseError.self) { try LfsQuotaParser.parse(text) }
        #expect(error?.line == 3)
        #expect(error?.description.hasPrefix("could not read `lfs quota` output at line 3: ") == true)
        #expect(LustreParseError(command: "lfs quota", reason: "x").description == "could not read `lfs quota` output: x")
    }
}

@Suite("lfs getstripe")
struct LfsGetstripeParserTests {
    @Test func plainLayoutsOfTwoFiles() throws {
        let entries = try LfsGetstripeParser.parse(fixture("lfs_getstripe_plain_rendered.txt"))
        #expect(
            entries == [
                LustreGetstripeEntry(
                    path: "/mnt/lustre/f1",
                    layout: .plain(
                        LustreStripeLayout(
                            stripeCount: 2, stripeSize: 1_048_576, pattern: "raid0", stripeOffset: 1, pool: nil,
                            objects: [
                                LustreStripeObject(ostIndex: 1, objectID: "0x2", group: "0x280000400"),
                                LustreStripeObject(ostIndex: 0, objectID: "0x3", group: "0x240000400"),
                            ]))),
                LustreGetstripeEntry(
                    path: "/mnt/lustre/old_f",
                    layout: .plain(
                        LustreStripeLayout(
                            stripeCount: 1, stripeSize: 4_194_304, pattern: "raid0", stripeOffset: 2, pool: "flash",
                            objects: [LustreStripeObject(ostIndex: 2, objectID: "0xcbf9f", group: "0")]))),
            ])
        #expect(entries.allSatisfy { !$0.layout.isComposite && !$0.layout.hasDataOnMDT })
    }

    @Test func compositeFromTheManual() throws {
        let entries = try LfsGetstripeParser.parse(fixture("lfs_getstripe_pfl_manual_init.txt"))
        func obj(_ idx: Int, _ fid: String) -> LustreStripeObject { LustreStripeObject(ostIndex: idx, objectID: fid) }
        func raid0(_ count: Int, _ offset: Int, _ objects: [LustreStripeObject]) -> LustreStripeLayout {
            LustreStripeLayout(stripeCount: count, stripeSize: 1_048_576, pattern: "raid0", stripeOffset: offset, objects: objects)
        }
        let expected = LustreFileLayout.composite(
            layoutGeneration: 5, mirrorCount: nil,
            components: [
                LustreLayoutComponent(
                    id: 1, flags: ["init"], extentStart: 0, extentEnd: 4_194_304,
                    layout: raid0(1, 0, [obj(0, "0x100000000:0x2:0x0")])),
                LustreLayoutComponent(
                    id: 2, flags: ["init"], extentStart: 4_194_304, extentEnd: 67_108_864,
                    layout: raid0(
                        4, 1,
                        [
                            obj(1, "0x100010000:0x2:0x0"), obj(2, "0x100020000:0x2:0x0"), obj(3, "0x100030000:0x2:0x0"),
                            obj(4, "0x100040000:0x2:0x0"),
                        ])),
                LustreLayoutComponent(
                    id: 3, flags: ["init"], extentStart: 67_108_864, extentEnd: nil,
                    layout: raid0(8, 4, [obj(4, "0x100040000:0x3:0x0"), obj(5, "0x100050000:0x2:0x0")])),
            ])
        #expect(entries == [LustreGetstripeEntry(path: "/mnt/testfs/create_comp", layout: expected)])
        #expect(expected.isComposite && !expected.hasDataOnMDT)
    }

    @Test func yamlComposite() throws {
        let layout = try LfsGetstripeParser.parseYAML(fixture("lfs_getstripe_yaml_pfl_v2.16plus.yaml"))
        func raid0(_ count: Int, _ offset: Int, _ objects: [LustreStripeObject] = []) -> LustreStripeLayout {
            LustreStripeLayout(stripeCount: count, stripeSize: 4_194_304, pattern: "raid0", stripeOffset: offset, objects: objects)
        }
        #expect(
            layout
                == .composite(
                    layoutGeneration: 3, mirrorCount: 1,
                    components: [
                        LustreLayoutComponent(
                            id: 1, mirrorID: 0, flags: ["init"], extentStart: 0, extentEnd: 1_073_741_824,
                            layout: raid0(1, 0, [LustreStripeObject(ostIndex: 0, objectID: "0x280000400:0x2:0x0")])),
                        LustreLayoutComponent(
                            id: 2, mirrorID: 0, flags: [], extentStart: 1_073_741_824, extentEnd: 4_294_967_296,
                            layout: raid0(4, -1)),
                        LustreLayoutComponent(
                            id: 3, mirrorID: 0, flags: [], extentStart: 4_294_967_296, extentEnd: nil, layout: raid0(4, -1)),
                    ]))
    }

    @Test func dataOnMDTAndNumericPatterns() throws {
        let text = """
            /mnt/lustre/dom
              lcm_layout_gen:    2
              lcm_mirror_count:  1
              lcm_entry_count:   2
                lcme_id:             1
                lcme_mirror_id:      0
                lcme_flags:          init
                lcme_extent.e_start: 0
                lcme_extent.e_end:   1048576
                  lmm_stripe_count:  0
                  lmm_stripe_size:   1048576
                  lmm_pattern:       mdt
                  lmm_layout_gen:    0
                  lmm_mdt_index:     0

                lcme_id:             2
                lcme_mirror_id:      0
                lcme_flags:          init,prefer
                lcme_extent.e_start: 1048576
                lcme_extent.e_end:   EOF
                  lmm_stripe_count:  1
                  lmm_stripe_size:   1048576
                  lmm_pattern:       80000001
                  lmm_layout_gen:    0
                  lmm_stripe_offset: 0x3

            /mnt/lustre/dir
            stripe_count:  1 stripe_size:   1048576 pattern:       raid0 stripe_offset: -1

            /mnt/lustre/striped_dir
            lmv_stripe_count: 2 lmv_stripe_offset: 0 lmv_hash_type: crush
            mdtidx\t\t FID[seq:oid:ver]
                 0\t\t [0x200000400:0x2:0x0]
                 1\t\t [0x240000400:0x2:0x0]

            /mnt/lustre/empty has no stripe info
            """
        let entries = try LfsGetstripeParser.parse(text)
        try #require(entries.count == 1)
        #expect(entries[0].layout.hasDataOnMDT)
        guard case .composite(2, 1, let components) = entries[0].layout else {
            Issue.record("not composite: \(entries[0].layout)")
            return
        }
        #expect(components.map(\.layout.pattern) == ["mdt", "raid0,released"])
        #expect(components.map(\.layout.stripeOffset) == [0, 3])
        #expect(components[1].flags == ["init", "prefer"])
    }

    @Test func yamlPlainLayout() throws {
        let text = """
            lmm_stripe_count:  1
            lmm_stripe_size:   1048576
            lmm_pattern:       1
            lmm_layout_gen:    0
            lmm_stripe_offset: 7
            lmm_objects:
                  - l_ost_idx: 7
                    l_fid:     0x100070000:0x9:0x0
            """
        #expect(
            try LfsGetstripeParser.parseYAML(text)
                == .plain(
                    LustreStripeLayout(
                        stripeCount: 1, stripeSize: 1_048_576, pattern: "raid0", stripeOffset: 7,
                        objects: [LustreStripeObject(ostIndex: 7, objectID: "0x100070000:0x9:0x0")])))
    }

    @Test(arguments: [
        "", "\n\n", "garbage", "hello: world",
        "/mnt/x\nlmm_stripe_count:  2\n",  // truncated: no pattern, no size
        "/mnt/x\nlmm_stripe_count:  2\nlmm_stripe_size:   99999999999999999999999\nlmm_pattern: raid0\n",
        "/mnt/x\nlmm_stripe_count:  two\n",
        "/mnt/x\nlmm_stripe_count:  1\nlmm_stripe_count:  1\n",
        "/mnt/x\n  lcm_layout_gen: 1\n    lcme_id: 1\n    lcme_extent.e_start: 0\n      lmm_stripe_count: 1\n"
            + "      lmm_stripe_size: 1048576\n      lmm_pattern: raid0\n",  // no e_end
        "/mnt/x\n  lcm_layout_gen: 1\n    lcme_flags: init\n",  // lcme_* before lcme_id
        "/mnt/x\nlmm_stripe_count:  1\nlmm_stripe_size: 1048576\nlmm_pattern: raid0\n\tobdidx\t\t objid\n\t     x\n",
        "/mnt/x\nlmm_stripe_count:  1\nlmm_stripe_size: 1048576\nlmm_pattern: ra%d0\n",
    ])
    func malformedInputThrows(text: String) {
        let error = #expect(throws: LustreParseError.self) { try LfsGetstripeParser.parse(text) }
        #expect(error?.command == "lfs getstripe")
    }

    @Test(arguments: ["", "something else", "lcm_layout_gen: 1\ncomponents:\n  - lcme_id: 1\n", "lmm_pattern: raid0\n"])
    func malformedYAMLThrows(text: String) {
        #expect(throws: LustreParseError.self) { try LfsGetstripeParser.parseYAML(text) }
    }
}

@Suite("lfs hsm_state, project, find")
struct LfsSmallParserTests {
    @Test func hsmStateFixture() throws {
        let states = try LfsHSMStateParser.parse(fixture("lfs_hsm_state.txt"))
        #expect(
            states == [
                LustreHSMState(
                    path: "/mnt/lustre/released_file", flags: 0xd, states: ["released", "exists", "archived"], archiveID: 1),
                LustreHSMState(path: "/mnt/lustre/archived_file", flags: 0x9, states: ["exists", "archived"], archiveID: 5),
                LustreHSMState(path: "/mnt/lustre/dirty_file", flags: 0xb, states: ["exists", "dirty", "archived"], archiveID: 1),
                LustreHSMState(path: "/mnt/lustre/plain_file", flags: 0, states: [], archiveID: nil),
            ])
        #expect(states.map(\.isReleased) == [true, false, false, false])
        #expect(states.map(\.isDirty) == [false, false, true, false])
        #expect(states.map(\.isArchived) == [true, true, true, false])
    }

    @Test func hsmPathContainingTheSeparator() throws {
        let states = try LfsHSMStateParser.parse("/mnt/lustre/odd: (0x1) name: (0x00000004) released, archive_id:2\n")
        #expect(states.map(\.path) == ["/mnt/lustre/odd: (0x1) name"])
        #expect(states.first?.isReleased == true)
        #expect(states.first?.archiveID == 2)
    }

    @Test(arguments: ["", "no state here", "/x: (0xZZ) exists", "/x: (0x1 exists", ": (0x1) exists", "/x: (0x100000000)"])
    func hsmMalformedThrows(text: String) {
        #expect(throws: LustreParseError.self) { try LfsHSMStateParser.parse(text) }
    }

    @Test func projectListFixture() throws {
        #expect(
            try LfsProjectParser.parseList(fixture("lfs_project_d.txt")) == [
                LustreProjectEntry(projectID: 200_020, inherit: true, path: "/hpc/projects/group.royer"),
                LustreProjectEntry(projectID: 0, inherit: false, path: "/mnt/lustre/scratch_dir"),
            ])
        #expect(
            try LfsProjectParser.parseList("   12 P /a b/c d \n") == [LustreProjectEntry(projectID: 12, inherit: true, path: "/a b/c d ")])
    }

    @Test func projectCheckFixture() throws {
        #expect(
            try LfsProjectParser.parseCheck(fixture("lfs_project_c.txt")) == [
                LustreProjectCheckIssue(path: "/mnt/lustre/dir1/sub", kind: .inheritNotSet),
                LustreProjectCheckIssue(path: "/mnt/lustre/dir1/f1", kind: .projectMismatch(inode: 0, tree: 1000)),
            ])
        #expect(try LfsProjectParser.parseCheck("") == [])
    }

    @Test(arguments: ["", "abc - /x", " 1000 X /x", "4294967296 P /x", "  12 P", "12P /x"])
    func projectListMalformedThrows(text: String) {
        #expect(throws: LustreParseError.self) { try LfsProjectParser.parseList(text) }
    }

    @Test(arguments: ["garbage", "/x - project identifier is not set (inode=a, tree=1)", " - project inheritance flag is not set"])
    func projectCheckMalformedThrows(text: String) {
        #expect(throws: LustreParseError.self) { try LfsProjectParser.parseCheck(text) }
    }

    @Test func findPrint0() {
        let bytes: [UInt8] = Array("/mnt/a\0/mnt/b c\0".utf8) + [0x2F, 0xFF, 0xFE, 0] + [0]
        #expect(LfsFindParser.parsePrint0(bytes) == [Array("/mnt/a".utf8), Array("/mnt/b c".utf8), [0x2F, 0xFF, 0xFE]])
        #expect(LfsFindParser.parsePrint0([]) == [])
        #expect(LfsFindParser.parsePrint0([0, 0]) == [])
    }
}

@Suite struct LustreVersionTests {
    @Test func readsWhatLfsVersionPrints() {
        #expect(LustreVersion(lfsOutput: "lfs 2.15.4\n") == LustreVersion(major: 2, minor: 15, patch: 4))
        #expect(LustreVersion(lfsOutput: "lfs version 2.12.9_ddn12") == LustreVersion(major: 2, minor: 12, patch: 9))
        #expect(LustreVersion(lfsOutput: "lfs 2.16") == LustreVersion(major: 2, minor: 16))
        #expect(LustreVersion(lfsOutput: "lfs: unknown option") == nil)
        #expect(LustreVersion(major: 2, minor: 14, patch: 99) < LustreVersion(major: 2, minor: 15))
    }
}
