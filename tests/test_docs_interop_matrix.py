"""docs/interop.md's contents and capability matrix cannot rot silently: every link to a heading of the file or of
its pages docs/interop/*.md (the contents' and the matrix's) resolves, every matrix cell is one of the kinds the
legend allows and cites what backs it, every cited test exists (file and function), and every cited refusal is still
in the code. A section is found wherever it is (:func:`find_section`): still in docs/interop.md, or split out to its
own page docs/interop/NAME.md whose ``# `` title is the section's ``## `` heading. Fast: text only."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "interop.md"
PAGES = ROOT / "docs" / "interop"  # one page per family / feature, split out of DOC


KINDS = ("yes", "refused", "runs", "untested", "—")


def pages() -> list:
    """The split-out pages docs/interop/*.md, by name."""
    return sorted(PAGES.glob("*.md"))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, everything but word characters, '-' and ' ' dropped, ' ' -> '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set:
    """The anchors of the file's headings (outside code blocks), repeated ones numbered as GitHub numbers them."""
    seen, out, fenced = {}, set(), False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"#{1,6} (.+)", line)
        if match:
            base = slug(match.group(1))
            out.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return out


def section(text: str, heading: str) -> str:
    """The text from ``heading`` (a whole heading line) to the next heading of the same or a higher level (outside
    code blocks)."""
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index("\n" + heading + "\n") + 1
    end, fenced = start + len(heading) + 1, False
    for line in text[end:].splitlines(keepends=True):  # a "# comment" inside a code block is no heading
        fenced = fenced != line.startswith("```")
        if not fenced and re.match(r"#{1,%d} " % level, line):
            break
        end += len(line)
    return text[start:end]


def find_section(heading: str) -> str:
    """The ``## `` section ``heading`` of docs/interop.md wherever it is now: in the file, or as the whole of the
    page docs/interop/*.md whose first line is the same heading as ``# `` (the split's pages)."""
    text = DOC.read_text()
    if "\n" + heading + "\n" in text:
        return section(text, heading)
    title = "# " + heading.lstrip("#").strip()
    found = [page.read_text() for page in pages() if page.read_text().startswith(title + "\n")]
    assert len(found) == 1, f"{heading!r}: not in docs/interop.md, and the title of {len(found)} docs/interop/*.md"
    return found[0]


def interop_links(text: str, doc: Path) -> list:
    """(file, anchor) of the links of ``doc``'s ``text`` into docs/interop.md or docs/interop/*.md (anchor "" for a
    whole page)."""
    out = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if file == DOC or file.parent == PAGES:
            out.append((file, anchor))
    return out


def cells_of(line: str) -> list:
    """A table row's cells; an escaped pipe (``\\|``, as in ``|x0|``) stays in its cell."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]


def matrix_rows(text: str):
    """(feature, [cell, ...]) of the capability matrix's table."""
    table = [line for line in section(text, "## Capability matrix").splitlines() if line.startswith("|")]
    header = cells_of(table[0])
    assert header[1:] == ["SD 1.x / 2.x", "SD-XL", "SD3", "FLUX.1", "DiT"], header
    for line in table[2:]:
        cells = cells_of(line)
        assert len(cells) == len(header), line
        yield cells[0], cells[1:]


def footnotes(text: str, letter: str) -> dict:
    """{"T3": the rest of its line} of the matrix's lists: lines ``- **T3** ...``."""
    body = section(text, "## Capability matrix")
    return {m.group(1): m.group(2) for m in re.finditer(r"^- \*\*(%s[A-Z]{0,2}\d+)\*\* (.+)$" % letter, body, re.M)}


def test_every_link_to_a_heading_of_the_file_resolves():
    links = interop_links(DOC.read_text(), DOC)
    assert len(links) > 60  # the contents alone link every section
    known = {file: anchors(file.read_text()) for file, _ in links if file.is_file()}
    missing = sorted({f"{file.relative_to(ROOT)}#{anchor}" for file, anchor in links
                      if file not in known or (anchor and anchor not in known[file])})
    assert not missing, f"links of docs/interop.md to no heading of it or its pages: {missing}"


def test_links_to_other_docs_pages_resolve():
    text = DOC.read_text()
    for page, anchor in set(re.findall(r"\]\(([\w\-]+\.md)#([^)\s]+)\)", text)):
        target = DOC.parent / page
        assert target.is_file(), page
        assert anchor in anchors(target.read_text()), f"{page}#{anchor}"


def test_the_contents_list_every_section():
    text = DOC.read_text()
    listed = set(interop_links(section(text, "## Contents"), DOC))
    body = text[text.index("\n## Capability matrix"):]
    headings = {(DOC, anchor) for anchor in anchors(body) - {"capability-matrix"}}
    for page in pages():  # a page is listed by a link to it, its headings by their anchors
        title = anchors(page.read_text().splitlines()[0])
        headings |= {(page, "" if anchor in title else anchor) for anchor in anchors(page.read_text())}
    missing = sorted(f"{file.relative_to(ROOT)}#{anchor}" for file, anchor in headings - listed)
    assert not missing, f"headings the contents do not list: {missing}"


def test_every_matrix_cell_cites_what_backs_it():
    text = DOC.read_text()
    tests, refusals = footnotes(text, "T"), footnotes(text, "R")
    rows = list(matrix_rows(text))
    assert len(rows) >= 20
    used = set()
    for feature, cells in rows:
        for cell in cells:
            kind = next((k for k in KINDS if cell.startswith(k)), None)
            assert kind, f"{feature}: cell {cell!r} starts with none of {KINDS}"
            refs = re.findall(r"\b([TR][A-Z]{0,2}\d+)\b", cell)  # T12, a helper's TA1 / RC1, or TSG1
            used.update(refs)
            if kind in ("yes", "runs"):
                assert any(r.startswith("T") for r in refs), f"{feature}: {cell!r} cites no test"
            if kind == "refused":
                assert any(r.startswith("R") for r in refs), f"{feature}: {cell!r} cites no refusal in the code"
            for ref in refs:
                assert ref in tests or ref in refusals, f"{feature}: {ref} is in no list below the matrix"
    assert set(tests) | set(refusals) <= used, sorted(set(tests) | set(refusals) - used)


def test_every_cited_test_exists():
    tests = footnotes(DOC.read_text(), "T")
    assert len(tests) >= 40
    for ref, line in tests.items():
        cited = re.findall(r"`(tests/test_\w+\.py)::(test_\w+)`", line)
        assert cited, f"{ref} names no tests/FILE.py::TEST"
        for path, name in cited:
            source = ROOT / path
            assert source.is_file(), f"{ref}: {path} does not exist"
            assert re.search(rf"^def {name}\(", source.read_text(), re.M), f"{ref}: {path} has no {name}"


def test_every_cited_refusal_is_in_the_code():
    refusals = footnotes(DOC.read_text(), "R")
    assert len(refusals) >= 10
    for ref, line in refusals.items():
        cited = re.match(r"`(diffkit/[\w/]+\.py)`: `(.+?)`", line)
        assert cited, f"{ref} names no `diffkit/FILE.py`: `TEXT`"
        source = ROOT / cited.group(1)
        assert source.is_file(), f"{ref}: {cited.group(1)} does not exist"
        assert cited.group(2) in source.read_text(), f"{ref}: {cited.group(1)} no longer holds {cited.group(2)!r}"


def test_the_readme_links_to_the_matrix():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(docs/interop\.md#([^)\s]+)\)", readme)
    assert "capability-matrix" in links
    assert set(links) <= anchors(DOC.read_text()), links


PIXART = "## PixArt-α and PixArt-Σ folders (`diffkit.interop.pixart`)"
SANA = "## Sana folders (`diffkit.interop.sana`)"
LUMINA2 = "## Lumina-Image 2.0 folders (`diffkit.interop.lumina2`)"
LUMINA_NEXT = "## Lumina-Next folders (`diffkit.interop.lumina_next`)"


def check_own_table(heading: str, columns: list, letter: str) -> None:
    """A folder kind's own small table (its section, not a matrix column) is held to the matrix's rules: every cell
    one of the kinds citing a test (yes / runs) or a refusal (ids ``T<letter>n`` / ``R<letter>n``; ``letter`` may be
    alternatives, "PX|PP": a page whose table has two kinds' columns), and every cited
    test and refusal text still there."""
    body = find_section(heading)
    table = [line for line in body.splitlines() if line.startswith("|")]
    assert cells_of(table[0])[1:] == columns
    notes = {m.group(1): m.group(2) for m in re.finditer(r"^- \*\*([TR](?:%s)\d+)\*\* (.+)$" % letter, body, re.M)}
    used = set()
    for line in table[2:]:
        feature, *cells = cells_of(line)
        for cell in cells:
            kind = next((k for k in KINDS if cell.startswith(k)), None)
            refs = set(re.findall(r"\b([TR](?:%s)\d+)\b" % letter, cell))
            assert kind and refs <= set(notes), (feature, cell)
            assert kind not in ("yes", "runs") or any(r.startswith("T") for r in refs), (feature, cell)
            assert kind != "refused" or any(r.startswith("R") for r in refs), (feature, cell)
            used |= refs
    assert used == set(notes), sorted(set(notes) - used)
    for ref, line in notes.items():
        if ref.startswith("T"):
            cited = re.findall(r"`(tests/test_\w+\.py)::(test_\w+)`", line)
            assert cited, ref
            for path, name in cited:
                assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), (ref, path, name)
        else:
            cited = re.match(r"`(diffkit/[\w/]+\.py)`: `(.+?)`", line)
            assert cited and cited.group(2) in (ROOT / cited.group(1)).read_text(), ref


CHROMA = "## Chroma folders (`diffkit.interop.chroma`)"
BRIA = "## Bria 3.2 folders (`diffkit.interop.bria`)"
BRIA_FIBO = "## Bria FIBO folders (`diffkit.interop.bria_fibo`)"
BRIA_FIBO2 = "## Bria FIBO 2 folders (`diffkit.interop.bria_fibo2`)"
AURAFLOW = "## AuraFlow folders (`diffkit.interop.auraflow`)"
HUNYUAN_DIT = "## HunyuanDiT folders (`diffkit.interop.hunyuan_dit`)"
KOLORS = "## Kolors folders (`diffkit.interop.kolors`)"
QWEN_IMAGE = "## Qwen-Image folders (`diffkit.interop.qwen_image`)"
FLUX2 = "## FLUX.2 folders (`diffkit.interop.flux2`)"
Z_IMAGE = "## Z-Image folders (`diffkit.interop.z_image`)"
Z_IMAGE_OMNI = "## Z-Image Omni folders (`diffkit.interop.z_image_omni`)"
OVIS_IMAGE = "## Ovis-Image folders (`diffkit.interop.ovis_image`)"
COGVIEW4 = "## CogView4 folders (`diffkit.interop.cogview4`)"
DEEPFLOYD_IF = "## DeepFloyd IF folders (`diffkit.interop.deepfloyd_if`)"
HIDREAM = "## HiDream-I1 folders (`diffkit.interop.hidream`)"
STABLE_CASCADE = "## Stable Cascade folders (`diffkit.interop.stable_cascade`)"
LATENT_UPSCALE = "## Stable Diffusion x2 latent upscaler folders (`diffkit.interop.sd_latent_upscale`)"
KANDINSKY = "## Kandinsky 2.2 folders (`diffkit.interop.kandinsky`)"
KANDINSKY21 = "## Kandinsky 2.1 folders (`diffkit.interop.kandinsky21`)"
CONSISTENCY_MODELS = "## Consistency-model folders (`diffkit.interop.consistency_models`)"
KANDINSKY3 = "## Kandinsky 3 folders (`diffkit.interop.kandinsky3`)"
LDM = "## Latent-diffusion folders (`diffkit.interop.ldm`)"
GLIGEN = "## GLIGEN folders (`diffkit.interop.gligen`)"
LONGCAT = "## LongCat-Image folders (`diffkit.interop.longcat_image`)"
OMNIGEN = "## OmniGen folders (`diffkit.interop.omnigen`)"
ERNIE_IMAGE = "## ERNIE-Image folders (`diffkit.interop.ernie_image`)"
PRX = "## PRX folders (`diffkit.interop.prx`)"
KREA2 = "## Krea 2 folders (`diffkit.interop.krea2`)"
IDEOGRAM4 = "## Ideogram 4 folders (`diffkit.interop.ideogram4`)"
KANDINSKY5 = "## Kandinsky 5 folders (`diffkit.interop.kandinsky5`)"
KANDINSKY5_EDIT = "## Kandinsky 5 image-to-image folders (`diffkit.interop.kandinsky5_edit`)"
NUCLEUSMOE = "## NucleusMoE-Image folders (`diffkit.interop.nucleusmoe`)"
DREAMLITE = "## DreamLite folders (`diffkit.interop.dreamlite`)"
QWEN_IMAGE21 = "## Qwen-Image 2.1 folders (`diffkit.interop.qwen_image21`)"
JOYIMAGE = "## JoyImage Edit folders (`diffkit.interop.joyimage`)"
LEDITS_PP = "## LEDITS++ on Stable Diffusion folders (`diffkit.interop.ledits_pp`)"
MARIGOLD = "## Marigold folders (`diffkit.interop.marigold`)"
HUNYUAN_IMAGE = "## HunyuanImage folders (`diffkit.interop.hunyuan_image`)"
QWEN_LAYERED = "## Qwen-Image-Edit-2511 and Qwen-Image-Layered folders (`diffkit.interop.qwen_image_layered`)"
GLM_IMAGE = "## GLM-Image folders (`diffkit.interop.glm_image`)"
COSMOS2 = "## Cosmos Predict2 folders (`diffkit.interop.cosmos2`)"
CHRONOEDIT = "## ChronoEdit folders (`diffkit.interop.chronoedit`)"
ANIMATEDIFF = "## AnimateDiff folders (`diffkit.interop.animatediff`)"
ANIMATEDIFF_CONTROLNET = "## AnimateDiff with ControlNets (`diffkit.interop.animatediff_controlnet`)"
SVD = "## Stable Video Diffusion folders (`diffkit.interop.svd`)"
MOCHI = "## Mochi 1 folders (`diffkit.interop.mochi`)"
WAN = "## Wan folders (`diffkit.interop.wan`)"
WAN_I2V = "## Wan image-to-video folders (`diffkit.interop.wan_i2v`)"
WAN_VACE = "## Wan VACE folders (`diffkit.interop.wan_vace`)"
WAN_V2V = "## Wan video-to-video folders (`diffkit.interop.wan_v2v`)"
COGVIDEOX = "## CogVideoX folders (`diffkit.interop.cogvideox`)"
COGVIDEOX_FUN = "## CogVideoX-Fun control folders (`diffkit.interop.cogvideox`)"
LTX = "## LTX-Video folders (`diffkit.interop.ltx`)"
LTX_CONDITION = "## LTX-Video condition folders (`diffkit.interop.ltx_condition`)"
COSMOS2_VIDEO = "## Cosmos Predict2 Video2World folders (`diffkit.interop.cosmos2_video`)"
COSMOS2_5 = "## Cosmos Predict 2.5 folders (`diffkit.interop.cosmos2_5`)"
LATTE = "## Latte folders (`diffkit.interop.latte`)"
SD_IMAGE_VARIATION = "## Stable Diffusion image variation folders (`diffkit.interop.sd_image_variation`)"
STABLE_UNCLIP = "## Stable unCLIP folders (`diffkit.interop.stable_unclip`)"
VISUALCLOZE = "## VisualCloze folders (`diffkit.interop.visualcloze`)"
HUNYUAN_VIDEO = "## HunyuanVideo folders (`diffkit.interop.hunyuan_video`)"
HUNYUAN_VIDEO_I2V = "## HunyuanVideo image-to-video folders (`diffkit.interop.hunyuan_video_i2v`)"
KANDINSKY5_VIDEO = "## Kandinsky 5 video folders (`diffkit.interop.kandinsky5_video`)"
SKYREELS_V2 = "## SkyReels-V2 folders (`diffkit.interop.skyreels_v2`)"
MODELSCOPE = "## ModelScope text-to-video folders (`diffkit.interop.modelscope`)"
HUNYUAN_VIDEO15 = "## HunyuanVideo 1.5 folders (`diffkit.interop.hunyuan_video15`)"
ALLEGRO = "## Allegro folders (`diffkit.interop.allegro`)"
SANA_VIDEO = "## SANA-Video folders (`diffkit.interop.sana_video`)"
EASYANIMATE = "## EasyAnimate folders (`diffkit.interop.easyanimate`)"
HUNYUAN_FRAMEPACK = "## HunyuanVideo FramePack folders (`diffkit.interop.hunyuan_framepack`)"
LUCY_EDIT = "## Lucy-Edit folders (`diffkit.interop.lucy_edit`)"
MOTIF_VIDEO = "## Motif-Video folders (`diffkit.interop.motif_video`)"
LTX2 = "## LTX-2 folders (`diffkit.interop.ltx2`)"
PIA = "## PIA folders (`diffkit.interop.pia`)"


@pytest.mark.parametrize("heading,columns,letter", [(PIXART, ["PixArt-α", "PixArt-Σ"], "L"),
                                                    (SANA, ["SanaPipeline", "SanaSprintPipeline"], "G"),
                                                    (CHROMA, ["Chroma"], "Z"), (LUMINA2, ["Lumina2Pipeline"], "T"),
                                                    (AURAFLOW, ["AuraFlowPipeline"], "R"),
                                                    (HUNYUAN_DIT, ["HunyuanDiTPipeline"], "HD"),
                                                    (KOLORS, ["KolorsPipeline", "KolorsImg2ImgPipeline",
                                                              "KolorsPAGPipeline"], "KO"),
                                                    (QWEN_IMAGE, ["QwenImagePipeline",
                                                                  "QwenImageEditPipeline / Plus"], "QI"),
                                                    (FLUX2, ["Flux2Pipeline", "Flux2KleinPipeline"], "FX"),
                                                    (Z_IMAGE, ["ZImagePipeline / Img2Img / Inpaint"], "ZI"),
                                                    (Z_IMAGE_OMNI, ["ZImageOmniPipeline"], "ZO"),
                                                    (OVIS_IMAGE, ["OvisImagePipeline"], "OV"),
                                                    (COGVIEW4, ["CogView4Pipeline", "CogView3PlusPipeline"], "CV"),
                                                    (DEEPFLOYD_IF, ["IFPipeline", "IFSuperResolutionPipeline"], "IF"),
                                                    (HIDREAM, ["HiDreamImagePipeline"], "HI"),
                                                    (STABLE_CASCADE, ["StableCascadePriorPipeline",
                                                                      "StableCascadeDecoderPipeline"], "SC"),
                                                    (LATENT_UPSCALE, ["StableDiffusionLatentUpscalePipeline"], "LU"),
                                                    (LUMINA_NEXT, ["LuminaPipeline"], "LN"),
                                                    (KANDINSKY, ["KandinskyV22PriorPipeline", "KandinskyV22Pipeline"],
                                                     "KD"),
                                                    (KANDINSKY21, ["KandinskyPriorPipeline",
                                                                   "KandinskyPipeline / Img2Img / Inpaint"], "KA"),
                                                    (CONSISTENCY_MODELS, ["ConsistencyModelPipeline"], "CM"),
                                                    (KANDINSKY3, ["Kandinsky3Pipeline", "Kandinsky3Img2ImgPipeline"],
                                                     "KT"),
                                                    (LDM, ["LDMTextToImagePipeline", "LDMPipeline",
                                                           "LDMSuperResolutionPipeline"], "LD"),
                                                    (GLIGEN, ["StableDiffusionGLIGENPipeline",
                                                              "StableDiffusionGLIGENTextImagePipeline"], "GL"),
                                                    (BRIA, ["BriaPipeline"], "BR"),
                                                    (BRIA_FIBO, ["BriaFiboPipeline", "BriaFiboEditPipeline"], "BF"),
                                                    (BRIA_FIBO2, ["BriaFibo2Pipeline"], "BO"),
                                                    (LONGCAT, ["LongCatImagePipeline", "LongCatImageEditPipeline"],
                                                     "LC"),
                                                    (OMNIGEN, ["OmniGenPipeline"], "OG"),
                                                    (ERNIE_IMAGE, ["ErnieImagePipeline"], "EI"),
                                                    (PRX, ["PRXPipeline", "PRXPixelPipeline"], "PX|PP"),
                                                    (KREA2, ["Krea2Pipeline"], "KR"),
                                                    (IDEOGRAM4, ["Ideogram4Pipeline"], "ID"),
                                                    (KANDINSKY5, ["Kandinsky5T2IPipeline"], "KF"),
                                                    (KANDINSKY5_EDIT, ["Kandinsky5I2IPipeline"], "KI"),
                                                    (NUCLEUSMOE, ["NucleusMoEImagePipeline"], "NM"),
                                                    (DREAMLITE, ["DreamLitePipeline", "DreamLiteMobilePipeline"], "DL"),
                                                    (QWEN_IMAGE21, ["QwenImage21Pipeline"], "QT"),
                                                    (JOYIMAGE, ["JoyImageEditPipeline", "JoyImageEditPlusPipeline"],
                                                     "JI"),
                                                    (LEDITS_PP, ["LEditsPPPipelineStableDiffusion",
                                                                 "LEditsPPPipelineStableDiffusionXL"], "LP"),
                                                    (MARIGOLD, ["MarigoldDepthPipeline", "MarigoldNormalsPipeline",
                                                                "MarigoldIntrinsicsPipeline"], "MG"),
                                                    (HUNYUAN_IMAGE, ["HunyuanImagePipeline",
                                                                     "HunyuanImageRefinerPipeline"], "HY"),
                                                    (QWEN_LAYERED, ["QwenImageEditPlusPipeline (2511)",
                                                                    "QwenImageLayeredPipeline"], "QE"),
                                                    (GLM_IMAGE, ["GlmImagePipeline"], "GM"),
                                                    (COSMOS2, ["Cosmos2TextToImagePipeline"], "CO"),
                                                    (CHRONOEDIT, ["ChronoEditPipeline"], "CE"),
                                                    (ANIMATEDIFF, ["AnimateDiffPipeline",
                                                                   "AnimateDiffSDXLPipeline"], "AD"),
                                                    (ANIMATEDIFF_CONTROLNET, ["AnimateDiffControlNetPipeline",
                                                                              "AnimateDiffSparseControlNetPipeline"],
                                                     "AC"),
                                                    (SVD, ["StableVideoDiffusionPipeline"], "VD"),
                                                    (MOCHI, ["MochiPipeline"], "MO"),
                                                    (WAN, ["WanPipeline"], "WN"),
                                                    (WAN_I2V, ["WanImageToVideoPipeline"], "WI"),
                                                    (WAN_VACE, ["WanVACEPipeline"], "VA|WL"),
                                                    (WAN_V2V, ["WanVideoToVideoPipeline"], "WV"),
                                                    (COGVIDEOX, ["CogVideoXPipeline"], "CX"),
                                                    (COGVIDEOX_FUN, ["CogVideoXFunControlPipeline"], "CF"),
                                                    (LTX, ["LTXPipeline", "LTXImageToVideoPipeline"], "LX"),
                                                    (LTX_CONDITION, ["LTXConditionPipeline"], "LQ"),
                                                    (COSMOS2_VIDEO, ["Cosmos2VideoToWorldPipeline"], "CW"),
                                                    (COSMOS2_5, ["Cosmos2_5_PredictBasePipeline"], "C5"),
                                                    (LATTE, ["LattePipeline"], "LA"),
                                                    (SD_IMAGE_VARIATION, ["StableDiffusionImageVariationPipeline"],
                                                     "SV"),
                                                    (STABLE_UNCLIP, ["StableUnCLIPPipeline",
                                                                     "StableUnCLIPImg2ImgPipeline"], "UC"),
                                                    (VISUALCLOZE, ["VisualClozeGenerationPipeline"], "VC"),
                                                    (HUNYUAN_VIDEO, ["HunyuanVideoPipeline"], "HV"),
                                                    (HUNYUAN_VIDEO_I2V, ["HunyuanVideoImageToVideoPipeline",
                                                                        "HunyuanSkyreelsImageToVideoPipeline"], "HJ"),
                                                    (KANDINSKY5_VIDEO, ["Kandinsky5T2VPipeline",
                                                                        "Kandinsky5I2VPipeline"], "KV"),
                                                    (SKYREELS_V2, ["SkyReelsV2Pipeline",
                                                                   "SkyReelsV2ImageToVideoPipeline",
                                                                   "SkyReelsV2DiffusionForcingPipeline",
                                                                   "SkyReelsV2DiffusionForcingImageToVideoPipeline",
                                                                   "SkyReelsV2DiffusionForcingVideoToVideoPipeline"],
                                                     "SK|SF|WL"),
                                                    (MODELSCOPE, ["TextToVideoSDPipeline", "VideoToVideoSDPipeline",
                                                                  "I2VGenXLPipeline"], "MS"),
                                                    (HUNYUAN_VIDEO15, ["HunyuanVideo15Pipeline",
                                                                       "HunyuanVideo15ImageToVideoPipeline"], "HF"),
                                                    (ALLEGRO, ["AllegroPipeline"], "AL"),
                                                    (SANA_VIDEO, ["SanaVideoPipeline", "SanaImageToVideoPipeline"],
                                                     "SN"),
                                                    (EASYANIMATE, ["EasyAnimatePipeline",
                                                                   "EasyAnimateInpaintPipeline"], "EA"),
                                                    (HUNYUAN_FRAMEPACK, ["HunyuanVideoFramepackPipeline"], "FP"),
                                                    (LUCY_EDIT, ["LucyEditPipeline"], "LE|WL"),
                                                    (MOTIF_VIDEO, ["MotifVideoPipeline",
                                                                   "MotifVideoImage2VideoPipeline"], "MV"),
                                                    (LTX2, ["LTX2Pipeline"], "L2"),
                                                    (PIA, ["PIAPipeline"], "PI")])
def test_own_tables_cite_what_backs_them(heading, columns, letter):
    """Each folder kind's own small table (the list above): :func:`check_own_table`."""
    check_own_table(heading, columns, letter)
