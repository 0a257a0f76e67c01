"""Presets: file validation (file:line: field), search-path overrides, stem sets, refresh, recipes."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.common.errors import InputError, PresetError
from bridge.common.options import Acceleration, OutputFormat, ResidualMethod
from bridge.common.request import SeparationRequest, Span
from bridge.presets.files import PresetProblem, read_preset_file
from bridge.presets.library import (
    EXAMPLE_PRESET_FILE,
    PresetFileError,
    PresetLibrary,
    builtin_presets_dir,
    load_preset_file,
    project_presets_dir,
    slug,
)
from bridge.presets.recipe import recipe_for, recipe_from_preset

# --------------------------------------------------------------------------------------------------
# helpers


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(tmp_path: Path, text: str) -> list[PresetProblem]:
    presets, problems = read_preset_file(write(tmp_path / "p.yaml", text))
    assert problems, f"expected a problem, loaded {[p.name for p in presets]}"
    return problems


def only_problem(tmp_path: Path, text: str) -> PresetProblem:
    problems = problems_of(tmp_path, text)
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def request(**fields: object) -> SeparationRequest:
    return SeparationRequest.model_validate({"source": "/audio/Song.wav", **fields})


# --------------------------------------------------------------------------------------------------
# validation: every problem names the file, the line and the field, and says what is allowed


def test_unknown_top_level_key_names_line_and_suggests_the_field(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "name: vox\nprompt: singing voice\ndescripton: typo\n")
    assert (problem.line, problem.field) == (3, "descripton")
    assert "did you mean `description`" in problem.message
    assert "allowed here: name, description, prompt, spans, stems, options, output, tags" in problem.message
    assert str(problem) == f"{tmp_path / 'p.yaml'}:3: descripton: {problem.message}"


def test_unknown_option_lists_the_service_options(tmp_path: Path) -> None:
    problem = only_problem(
        tmp_path, "name: vox\nprompt: voice\noptions:\n  acceleration: fast\n  candidates: 2\n"
    )
    assert (problem.line, problem.field) == (5, "options.candidates")
    assert "reranking_candidates" in problem.message and "chunk_overlap" in problem.message


def test_unknown_output_key_lists_the_output_options(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "name: vox\nprompt: voice\noutput: {folder: Stems, colour: red}\n")
    assert (problem.line, problem.field) == (3, "output.colour")
    assert "allowed here: label, format, subtype, residual, folder" in problem.message


def test_loader_fields_cannot_be_written_in_a_file(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "name: vox\nprompt: voice\nline: 7\n")
    assert (problem.line, problem.field) == (3, "line")
    assert problem.message.startswith("unknown field")
    problem = only_problem(tmp_path, "name: set\nstems:\n  - prompt: kick drum\n    origin: x\n")
    assert (problem.line, problem.field) == (4, "stems[0].origin")


@pytest.mark.parametrize(
    ("body", "line", "field", "expected"),
    [
        (
            "options:\n  reranking_candidates: 0\n",
            4,
            "options.reranking_candidates",
            "must be at least 1 (got 0)",
        ),
        (
            "options:\n  reranking_candidates: 9\n",
            4,
            "options.reranking_candidates",
            "must be at most 8 (got 9)",
        ),
        ("options:\n  chunk_overlap: -1\n", 4, "options.chunk_overlap", "must be at least 0 (got -1)"),
        (
            "options:\n  max_chunk_duration: 0\n",
            4,
            "options.max_chunk_duration",
            "must be more than 0 (got 0)",
        ),
        ("options:\n  acceleration: turbo\n", 4, "options.acceleration", "'fast', 'balanced' or 'quality'"),
        ("options:\n  output_format: flac\n", 4, "options.output_format", "'wav' or 'mp3' (got 'flac')"),
        ("output:\n  residual: half\n", 4, "output.residual", "'complement' or 'service'"),
        (
            "options:\n  reranking_candidates: two\n",
            4,
            "options.reranking_candidates",
            "whole number (got 'two')",
        ),
        (
            "options:\n  reranking_candidates: true\n",
            4,
            "options.reranking_candidates",
            "should be a number, got true",
        ),
        ("spans:\n  - {start: .nan, end: 1}\n", 4, "spans[0].start", "should be a finite number, got nan"),
        ("options:\n  predict_spans: maybe\n", 4, "options.predict_spans", "true or false (got 'maybe')"),
        ("options: fast\n", 3, "options", "block of `field: value` lines (got 'fast')"),
        ("tags: vocals\n", 3, "tags", "must be a list"),
        ("output:\n  format: XYZ\n", 4, "output.format", "allowed: AIFF"),
        ("output:\n  format: WAV\n  subtype: PCM_7\n", 5, "output.subtype", "for WAV; allowed:"),
        ("output:\n  folder: /abs/Stems\n", 4, "output.folder", "relative to the project"),
        ("output:\n  folder: 'C:\\Stems'\n", 4, "output.folder", "relative to the project"),
        ("output:\n  label: 'a/b'\n", 4, "output.label", "used in file names"),
        ("output:\n  label: con\n", 4, "output.label", "reserved file name on Windows"),
        ("spans:\n  - {start: 2, end: 1}\n", 4, "spans[0]", "end (1.0) must be after its start (2.0)"),
        ("spans: []\n", 3, "spans", "at least 1"),
    ],
)
def test_wrong_types_ranges_and_enums(
    tmp_path: Path, body: str, line: int, field: str, expected: str
) -> None:
    problem = only_problem(tmp_path, f"name: vox\nprompt: singing voice\n{body}")
    assert (problem.line, problem.field) == (line, field)
    assert expected in problem.message
    assert problem.preset == "vox"


def test_empty_and_missing_prompt(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "name: vox\nprompt: '   '\n")
    assert (problem.line, problem.field) == (2, "prompt")
    assert "must not be empty" in problem.message and "dog barking" in problem.message
    problem = only_problem(tmp_path, "# my preset\nname: vox\ndescription: nothing to isolate\n")
    assert (problem.line, problem.field) == (2, "prompt")
    assert "needs a `prompt`" in problem.message


def test_prompt_must_be_text(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "name: vox\nprompt: 808\n")
    assert (problem.line, problem.field) == (2, "prompt")
    assert "must be text (got 808)" in problem.message


def test_missing_and_unsafe_names(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "prompt: singing voice\n")
    assert (problem.line, problem.field, problem.message) == (1, "name", "is required")
    problem = only_problem(tmp_path, "name: 'vox:lead'\nprompt: singing voice\n")
    assert (problem.line, problem.field) == (1, "name")
    assert "used in file names" in problem.message
    problem = only_problem(tmp_path, "name: '--'\nprompt: singing voice\n")
    assert "letters or digits" in problem.message


def test_duplicate_names_in_one_file_keep_the_first(tmp_path: Path) -> None:
    text = "presets:\n- {name: vox, prompt: a}\n- {name: drums, prompt: b}\n- {name: Vox, prompt: c}\n"
    presets, problems = read_preset_file(write(tmp_path / "p.yaml", text))
    assert [p.name for p in presets] == ["vox", "drums"]
    assert [(p.line, p.field) for p in problems] == [(4, "name")]
    assert "already defined on line 2" in problems[0].message


def test_key_written_twice_is_refused(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "name: vox\nprompt: a\ntags: [x]\nprompt: b\n")
    assert (problem.line, problem.field) == (4, "prompt")
    assert "written twice" in problem.message


def test_yaml_syntax_error_has_its_line(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "name: vox\nprompt: voice\noptions:\n  acceleration: [fast\n")
    assert problem.field == "yaml" and problem.line is not None and problem.line >= 4
    assert "not valid YAML" in problem.message


def test_file_level_problems(tmp_path: Path) -> None:
    assert only_problem(tmp_path, "# nothing yet\n").message.startswith("is empty")
    assert "one preset" in only_problem(tmp_path, "- vocals\n- drums\n").message
    problem = only_problem(tmp_path, "presets:\n  name: vox\n")
    assert (problem.line, problem.field) == (1, "presets") and "must be a list" in problem.message
    problem = only_problem(tmp_path, "presets: []\nname: vox\n")
    assert (problem.line, problem.field) == (2, "name")
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: vox\nprompt: caf\xe9 ambience\n")
    problems = read_preset_file(path)[1]
    assert [(p.line, p.field) for p in problems] == [(2, "file")]
    assert "UTF-8" in problems[0].message
    assert read_preset_file(tmp_path / "absent.yaml")[1][0].message.startswith("cannot be read")


@pytest.mark.timeout(30)  # a hang guard: a message formatted in vain (str() of 9**9 strings) took 45-55 s
def test_self_referencing_and_exploding_aliases_are_reported(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "name: a\nprompt: x\ntags: &t [t, *t]\n")
    assert (problem.line, problem.field) == (3, "tags[1]") and "must be text" in problem.message
    levels = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    text = "\n".join(
        ["x-anchors:", *(f"  {level}" for level in levels), "name: lol", "prompt: laughing", "tags: *l8"]
    )
    problems = problems_of(tmp_path, text + "\n")  # 9**9 strings if walked naively
    assert {(p.line, p.field) for p in problems} == {(1, "x-anchors")} | {
        (13, f"tags[{i}]") for i in range(9)
    }


def test_errors_in_a_list_point_at_the_right_preset(tmp_path: Path) -> None:
    text = (
        "presets:\n"
        "  - name: good\n"
        "    prompt: dog barking\n"
        "  - name: bad\n"
        "    prompt: kick drum\n"
        "    options:\n"
        "      acceleration: quality\n"
        "      reranking_candidates: 0\n"
    )
    presets, problems = read_preset_file(write(tmp_path / "p.yaml", text))
    assert [p.name for p in presets] == ["good"]
    assert presets[0].line == 2
    assert [(p.line, p.field, p.preset) for p in problems] == [(8, "options.reranking_candidates", "bad")]


@pytest.mark.parametrize("labels", [
    ("electric guitar rhythm part left channel A", "electric guitar rhythm part left channel B"),  # > 40
    ("lead  vox", "lead vox"),  # runs of spaces are one in a file name
    ("Caf\u00e9", "Cafe\u0301"),  # composed and decomposed: the same name
])
def test_stem_labels_that_would_name_the_same_file_are_refused(tmp_path: Path, labels: tuple[str, str]) -> None:
    """Labels are cut to 40 characters, spaces merged and unsafe characters replaced in file names: two
    labels the check let through named one file, and the stem set failed after every step was paid."""
    first, second = labels
    problem = only_problem(tmp_path, f'name: s\nstems:\n  - label: "{first}"\n    prompt: x\n'
                                     f'  - label: "{second}"\n    prompt: y\n')
    assert (problem.line, problem.field) == (5, "stems[1].label"), problem
    assert "the same file" in problem.message and "first 40 characters" in problem.message


def test_stem_set_validation(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "name: s\nprompt: x\nstems: [vocals]\n")
    assert (problem.line, problem.field) == (3, "stems") and "remove `prompt`" in problem.message
    problem = only_problem(tmp_path, "name: s\nstems:\n  - vocals\n  - label: other\n    prompt: x\n")
    assert (problem.line, problem.field) == (
        4,
        "stems[1].label",
    ) and "kept for what is left" in problem.message
    problem = only_problem(tmp_path, "name: s\nstems:\n  - vocals\n  - label: Vocals\n    prompt: x\n")
    assert (problem.line, problem.field) == (4, "stems[1].label") and "each needs its own" in problem.message
    problem = only_problem(tmp_path, "name: s\nstems:\n  - preset: vocals\n    prompt: singing\n")
    assert (problem.line, problem.field) == (3, "stems[0]") and "not both" in problem.message
    problem = only_problem(tmp_path, "name: s\nstems:\n  - prompt: kick\n    gain: 3\n")
    assert (problem.line, problem.field) == (4, "stems[0].gain")
    assert "allowed here: label, prompt, spans, options, preset" in problem.message
    problem = only_problem(tmp_path, "name: s\nstems: []\n")
    assert (problem.line, problem.field) == (2, "stems")


def test_load_preset_file_raises_with_every_problem(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "name: vox\nprompt: ''\noptions: {acceleration: slow}\n")
    with pytest.raises(PresetFileError) as caught:
        load_preset_file(path)
    assert [(p.line, p.field) for p in caught.value.problems] == [(2, "prompt"), (3, "options.acceleration")]
    assert f"{path}:3: options.acceleration: must be one of" in str(caught.value)
    assert isinstance(caught.value, PresetError) and caught.value.hint


def test_single_preset_file_and_list_file_both_load(tmp_path: Path) -> None:
    single = load_preset_file(
        write(tmp_path / "one.yaml", "# a comment\nname: Crowd Walla\nprompt: crowd chatter\n")
    )
    assert [(p.name, p.line, p.origin) for p in single] == [("Crowd Walla", 2, tmp_path / "one.yaml")]
    many = load_preset_file(
        write(tmp_path / "many.yaml", "presets:\n- name: a\n  prompt: x\n- name: b\n  prompt: y\n")
    )
    assert [(p.name, p.line) for p in many] == [("a", 2), ("b", 4)]


def test_example_file_is_valid_and_means_what_it_says(tmp_path: Path) -> None:
    presets = load_preset_file(write(tmp_path / "example.yaml", EXAMPLE_PRESET_FILE))
    lead, split = presets
    assert lead.options.acceleration is Acceleration.quality and lead.options.reranking_candidates == 2
    assert lead.output.format == "FLAC" and lead.output.label == "lead"
    assert split.stems is not None and [s.label for s in split.stems] == ["vocals", "drums", "bass"]
    library = PresetLibrary([("built-in", builtin_presets_dir()), ("user", tmp_path)])
    steps = recipe_from_preset(library.get("my-band-split")).steps
    assert [s.options.acceleration for s in steps] == [Acceleration.fast] * 3
    assert steps[2].options.reranking_candidates == 2 and steps[2].prompt == "bass guitar"


# --------------------------------------------------------------------------------------------------
# the built-in library


REQUIRED_BUILTINS = {
    "vocals", "lead-vocal", "backing-vocals", "drums", "kick", "snare", "hi-hats", "bass", "piano",
    "acoustic-guitar", "electric-guitar", "strings", "brass", "synth-pad",
    "dialogue", "crowd", "room-tone", "wind-noise", "traffic", "hvac-hum",
    "dog-barking", "birds", "footsteps", "sirens", "4-stems", "dialogue-cleanup",
}  # fmt: skip


@pytest.mark.parametrize("path", sorted(builtin_presets_dir().glob("*.yaml")), ids=lambda p: p.name)
def test_every_builtin_file_loads_cleanly(path: Path) -> None:
    presets = load_preset_file(path)
    assert presets
    for preset in presets:
        assert preset.description, preset.name
        assert preset.tags, preset.name
        if preset.prompt is not None:
            # SAM Audio was trained on short lowercase noun/verb phrases ("dog barking").
            assert preset.prompt == preset.prompt.lower() and len(preset.prompt.split()) <= 4, preset.prompt


def test_builtin_library_is_complete_and_sensible() -> None:
    library = PresetLibrary([("built-in", builtin_presets_dir())])
    assert library.errors() == []
    assert set(library.names()) >= REQUIRED_BUILTINS
    assert len([p for p in library.presets() if p.stems is None]) >= 20
    assert {library.origin_of(name) for name in library.names()} == {"built-in"}
    lead = library.get("lead-vocal").options
    assert (lead.acceleration, lead.reranking_candidates) == (Acceleration.quality, 2)
    assert library.get("room-tone").options.acceleration is Acceleration.fast
    assert library.get("dog-barking").options.predict_spans is True
    four = recipe_from_preset(library.get("4-stems"))
    assert [(s.label, s.prompt) for s in four.steps] == [
        ("vocals", library.get("vocals").prompt),
        ("drums", library.get("drums").prompt),
        ("bass", library.get("bass").prompt),
    ]
    assert four.residual_label == "other"
    cleanup = recipe_from_preset(library.get("dialogue-cleanup"))
    assert [(s.label, s.prompt) for s in cleanup.steps] == [("dialogue", "people speaking")]
    assert cleanup.steps[0].options == library.get("dialogue").options
    prompts = [p.prompt for p in library.presets() if p.prompt]
    assert len(prompts) == len(set(prompts)), "two built-ins share a prompt"


def test_builtins_are_found_from_a_checkout() -> None:
    folder = builtin_presets_dir()
    assert (folder / "music.yaml").is_file() and (folder / "stem-sets.yaml").is_file()


# --------------------------------------------------------------------------------------------------
# search path: later folders override earlier ones by name


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    return {name: tmp_path / name for name in ("builtin", "user", "project")}


def library_of(folders: dict[str, Path]) -> PresetLibrary:
    return PresetLibrary([(origin, folder) for origin, folder in folders.items()])


def test_later_folders_override_by_name(folders: dict[str, Path]) -> None:
    builtin = "presets:\n- {name: vocals, prompt: singing voice}\n- {name: bass, prompt: bass guitar}\n"
    write(folders["builtin"] / "b.yaml", builtin + "- {name: kick, prompt: kick drum}\n")
    write(folders["user"] / "mine.yaml", "name: Bass\nprompt: synth bass\n")
    write(
        folders["project"] / "song.yml",
        "presets:\n- {name: bass, prompt: upright bass}\n- {name: vocals, prompt: rap vocals}\n",
    )
    library = library_of(folders)
    assert library.get("bass").prompt == "upright bass" and library.origin_of("bass") == "project"
    assert library.get("vocals").prompt == "rap vocals"
    assert library.get("kick").prompt == "kick drum" and library.origin_of("kick") == "builtin"
    assert library.names() == ["bass", "kick", "vocals"]
    assert library.get("BASS").origin == folders["project"] / "song.yml"


def test_missing_folders_are_fine(tmp_path: Path) -> None:
    library = PresetLibrary([("user", tmp_path / "nowhere")])
    assert library.names() == [] and library.errors() == [] and library.refresh() is False


def test_same_name_in_two_files_of_one_folder_keeps_the_first(folders: dict[str, Path]) -> None:
    write(folders["user"] / "a.yaml", "name: pad\nprompt: synthesizer pad\n")
    write(folders["user"] / "b.yaml", "name: pad\nprompt: string pad\n")
    library = library_of(folders)
    assert library.get("pad").prompt == "synthesizer pad"
    (error,) = library.errors()
    assert isinstance(error, PresetFileError)
    assert [(p.file.name, p.line, p.field) for p in error.problems] == [("b.yaml", 1, "name")]
    assert "also defined in a.yaml" in str(error)


def test_a_broken_preset_is_reported_to_who_asks_and_hurts_nothing_else(folders: dict[str, Path]) -> None:
    write(
        folders["builtin"] / "b.yaml",
        "presets:\n- {name: vocals, prompt: singing voice}\n- {name: kick, prompt: kick drum}\n",
    )
    write(
        folders["user"] / "vocals.yaml", "name: vocals\nprompt: singing\noptions: {reranking_candidates: 0}\n"
    )
    write(folders["user"] / "junk.yaml", "name: [unclosed\n")
    library = library_of(folders)
    assert library.get("kick").prompt == "kick drum"
    with pytest.raises(PresetError) as caught:
        library.get("vocals")  # the user's own version is broken: say so, never fall back silently
    assert f"{folders['user'] / 'vocals.yaml'}:3: options.reranking_candidates: must be at least 1" in str(
        caught.value
    )
    with pytest.raises(PresetError, match=r"junk\.yaml:2: yaml: is not valid YAML .*flow sequence on line 1"):
        library.get("junk")  # a file that cannot be parsed is known by its file name
    assert library.origin_of("vocals") == "user"
    assert sorted(p.file.name for e in library.errors() for p in getattr(e, "problems", ())) == [
        "junk.yaml",
        "vocals.yaml",
    ]
    assert library.names() == ["kick"]


def test_unknown_name_suggests_close_matches(folders: dict[str, Path]) -> None:
    builtin = "presets:\n- {name: vocals, prompt: a}\n- {name: lead-vocal, prompt: b}\n"
    write(folders["builtin"] / "b.yaml", builtin + "- {name: dialogue-cleanup, stems: [lead-vocal]}\n")
    library = library_of(folders)
    with pytest.raises(PresetError) as caught:
        library.get("vocal")
    assert "no preset called 'vocal'" in caught.value.message
    assert "'vocals'" in caught.value.hint and "'lead-vocal'" in caught.value.hint
    assert "dialogue" not in caught.value.hint
    assert library.get("Dialogue Cleanup").name == "dialogue-cleanup"
    assert library.get("dialogue_cleanup").name == "dialogue-cleanup"


# --------------------------------------------------------------------------------------------------
# stem sets resolve against the whole library


def test_stems_use_the_overriding_preset_and_merge_options_in_order(folders: dict[str, Path]) -> None:
    write(
        folders["builtin"] / "b.yaml",
        (
            "presets:\n"
            "- {name: vocals, prompt: singing voice,\n"
            "   options: {acceleration: quality, reranking_candidates: 3}}\n"
            "- {name: drums, prompt: drum kit, options: {chunk_overlap: 2}}\n"
            "- name: band\n"
            "  options: {acceleration: fast, max_chunk_duration: 30}\n"
            "  stems:\n"
            "    - vocals\n"
            "    - {preset: drums, label: kit, options: {acceleration: balanced}}\n"
            "    - {prompt: bass guitar}\n"
        ),
    )
    write(
        folders["project"] / "p.yaml",
        "name: vocals\nprompt: rap vocals\noptions: {reranking_candidates: 2}\n",
    )
    library = library_of(folders)
    recipe = recipe_from_preset(library.get("band"))
    assert [(s.label, s.prompt) for s in recipe.steps] == [
        ("vocals", "rap vocals"),
        ("kit", "drum kit"),
        ("bass-guitar", "bass guitar"),
    ]
    vocals, kit, bass = (s.options for s in recipe.steps)
    # referenced preset < stem set's options < the stem's own options
    assert (vocals.acceleration, vocals.reranking_candidates, vocals.max_chunk_duration) == ("fast", 2, 30)
    assert (kit.acceleration, kit.chunk_overlap, kit.max_chunk_duration) == ("balanced", 2, 30)
    assert (bass.acceleration, bass.reranking_candidates, bass.max_chunk_duration) == ("fast", 1, 30)
    assert recipe.residual_label == "other" and recipe.label == "band"


@pytest.mark.parametrize(
    ("stems", "expected"),
    [
        ("[vocals, nothing-here]", "'nothing-here', which does not exist"),
        ("[vocals, other-set]", "'other-set', a stem set"),
        ("[vocals, broken]", "'broken', which has a problem of its own"),
    ],
)
def test_bad_stem_references(folders: dict[str, Path], stems: str, expected: str) -> None:
    write(
        folders["builtin"] / "b.yaml",
        "presets:\n- {name: vocals, prompt: v}\n- {name: other-set, stems: [vocals]}\n",
    )
    write(folders["user"] / "broken.yaml", "name: broken\nprompt: ''\n")
    write(folders["user"] / "set.yaml", f"# split\nname: split\nstems: {stems}\n")
    library = library_of(folders)
    with pytest.raises(PresetFileError) as caught:
        library.get("split")
    (problem,) = caught.value.problems
    assert (problem.file.name, problem.line, problem.field) == ("set.yaml", 3, "stems[1]")
    assert expected in problem.message
    assert library.get("vocals").prompt == "v"
    assert any(problem in getattr(e, "problems", ()) for e in library.errors())


# --------------------------------------------------------------------------------------------------
# refresh: cheap, re-reads only what changed, notices added and removed files


def test_refresh_picks_up_edits_additions_and_removals(tmp_path: Path) -> None:
    user = tmp_path / "user"
    first = write(user / "a.yaml", "name: pad\nprompt: synthesizer pad\n")
    library = PresetLibrary([("user", user)])
    assert library.refresh() is False
    write(first, "name: pad\nprompt: warm analog synthesizer pad\n")
    assert library.refresh() is True
    assert library.get("pad").prompt == "warm analog synthesizer pad"
    write(user / "b.yaml", "name: kick\nprompt: kick drum\n")
    write(user / "notes.txt", "not a preset")
    assert library.refresh() is True and library.names() == ["kick", "pad"]
    first.unlink()
    assert library.refresh() is True and library.names() == ["kick"]
    with pytest.raises(PresetError, match="no preset called 'pad'"):
        library.get("pad")
    assert library.refresh() is False


def test_presets_that_all_vanish_at_once_are_kept_and_said_once(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A reinstall of the package under a running daemon removes every built-in file for a while: the
    daemon keeps its last good list (before: zero presets, every hot-folder drop failed)."""
    builtin, user = tmp_path / "builtin", tmp_path / "user"
    write(builtin / "piano.yaml", "name: piano\nprompt: piano\n")
    write(builtin / "vocals.yaml", "name: vocals\nprompt: singing voice\n")
    write(user / "mine.yaml", "name: vocals\nprompt: my own vocals\n")
    library = PresetLibrary([("built-in", builtin), ("user", user)])
    shutil.rmtree(builtin)
    with caplog.at_level(logging.INFO):
        library.refresh()
        library.refresh()
    assert library.names() == ["piano", "vocals"] and library.get("piano").prompt == "piano"
    assert library.get("vocals").prompt == "my own vocals"  # the user's still overrides the kept built-in
    assert sum("vanished at once" in r.getMessage() for r in caplog.records) == 1
    write(builtin / "piano.yaml", "name: piano\nprompt: grand piano\n")  # the reinstall finishes
    library.refresh()
    assert library.names() == ["piano", "vocals"] and library.get("piano").prompt == "grand piano"


def test_refresh_notices_a_same_size_replace_and_a_fix(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", "name: pad\nprompt: string pad\n")
    library = PresetLibrary([("user", tmp_path)])
    stat = path.stat()
    replacement = write(tmp_path / ".a.yaml.tmp", "name: pad\nprompt: violin pad\n")  # same size
    assert replacement.stat().st_size == stat.st_size
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(replacement, path)  # how editors save; same size and mtime, new inode
    assert library.refresh() is True and library.get("pad").prompt == "violin pad"
    write(path, "name: pad\nprompt: violin pad\noptions: {acceleration: warp}\n")
    assert library.refresh() is True
    with pytest.raises(PresetError, match=r"a\.yaml:3: options\.acceleration"):
        library.get("pad")
    write(path, "name: pad\nprompt: violin pad\noptions: {acceleration: fast}\n")
    assert library.refresh() is True
    assert library.get("pad").options.acceleration is Acceleration.fast and library.errors() == []


def test_refresh_re_resolves_stem_sets_when_a_referenced_preset_changes(tmp_path: Path) -> None:
    write(tmp_path / "set.yaml", "name: split\nstems: [vox]\n")
    vox = write(tmp_path / "vox.yaml", "name: vox\nprompt: singing voice\n")
    library = PresetLibrary([("user", tmp_path)])
    write(vox, "name: vox\nprompt: rap vocals here\n")
    assert library.refresh() is True
    assert recipe_from_preset(library.get("split")).steps[0].prompt == "rap vocals here"


# --------------------------------------------------------------------------------------------------
# recipes: what the pipeline runs for a request


def test_a_file_that_is_no_yaml_is_known_by_the_names_it_writes_so_asking_for_one_says_why(
        folders: dict[str, Path]) -> None:
    folders["user"].mkdir(parents=True)
    (folders["user"] / "my-vocals.yaml").write_text(
        "presets:\n  - name: Lead Vox\n    prompt: lead vocal\n  - name: 'Backing Vox'  # the pads\n"
        "    prompt: backing vocals\n    options: {reranking_candidates: 2\n")
    (folders["user"] / "kick-in.yaml").write_text("prompt: kick drum\noptions: [\n")  # no name: the file's
    library = library_of(folders)
    broken = set(library.names(include_broken=True)) - set(library.names())
    assert broken == {"Lead Vox", "Backing Vox", "kick-in"}  # not "my-vocals", which names no preset
    with pytest.raises(PresetError, match=r"my-vocals\.yaml:\d+: yaml: is not valid YAML"):
        library.get("lead vox")


@pytest.fixture
def builtins() -> PresetLibrary:
    return PresetLibrary([("built-in", builtin_presets_dir())])


def test_preset_wins_over_prompt_and_options_override(builtins: PresetLibrary) -> None:
    options = {"acceleration": "fast", "format": "FLAC"}
    recipe = recipe_for(request(preset="lead-vocal", prompt="a dog", options=options), builtins)
    (step,) = recipe.steps
    assert (recipe.name, recipe.label, step.label, step.prompt) == (
        "lead-vocal",
        "lead-vocal",
        "lead-vocal",
        "lead singer singing",
    )
    assert (step.options.acceleration, step.options.reranking_candidates) == (Acceleration.fast, 2)
    assert recipe.output.format == "FLAC" and recipe.residual_label == "residual"


@pytest.mark.parametrize(("preset", "options", "says"), [
    (None, {"format": "FLACC"}, "'FLACC' is not a file type"),
    (None, {"subtype": "PCM_42"}, "'PCM_42' is not a sample format"),
    ("lead-vocal", {"format": "FLAC", "subtype": "FLOAT"}, "'FLOAT' is not a sample format for FLAC"),
])
def test_a_mistyped_stem_format_in_a_request_is_refused_like_a_presets(
        builtins: PresetLibrary, preset: str | None, options: dict[str, str], says: str) -> None:
    """Refused before anything is paid, rather than written quietly in the source's format."""
    with pytest.raises(InputError, match=re.escape(says)):
        recipe_for(request(preset=preset, prompt=None if preset else "piano", options=options), builtins)


def test_a_reserved_label_in_a_request_is_refused_in_plain_words(builtins: PresetLibrary) -> None:
    """It said "cannot be used: it 'CON' is a reserved file name" (the name twice, the grammar broken)."""
    with pytest.raises(InputError) as err:
        recipe_for(request(prompt="piano", options={"label": "CON"}), builtins)
    assert str(err.value).startswith("The label 'CON' cannot be used: it is a reserved file name on Windows")


def test_ad_hoc_prompt_gets_a_file_safe_label(builtins: PresetLibrary) -> None:
    recipe = recipe_for(request(prompt="Dog barking: far away?", options={"output_format": "mp3"}), builtins)
    (step,) = recipe.steps
    assert (recipe.name, recipe.label, step.label) == (
        "prompt",
        "dog-barking-far-away",
        "dog-barking-far-away",
    )
    assert step.prompt == "Dog barking: far away?" and step.options.output_format is OutputFormat.mp3
    assert recipe.output.residual is ResidualMethod.complement and recipe.output.folder == "Stems"
    labelled = recipe_for(request(prompt="dog barking", options={"label": "dog"}), builtins)
    assert labelled.label == "dog" and labelled.steps[0].label == "dog"


def test_spans_go_to_the_step(builtins: PresetLibrary) -> None:
    spans = [{"start": 1.5, "end": 3.0}, {"start": 4.0, "end": 5.0, "include": False}]
    recipe = recipe_for(request(prompt="car honking", spans=spans), builtins)
    assert recipe.steps[0].spans == (Span(start=1.5, end=3.0), Span(start=4.0, end=5.0, include=False))
    only_spans = recipe_for(request(spans=spans[:1]), builtins)
    assert (only_spans.label, only_spans.steps[0].prompt) == ("spans", None)
    with pytest.raises(InputError, match="several stems"):
        recipe_for(request(preset="4-stems", spans=spans), builtins)


def test_stem_set_recipe_applies_overrides_to_every_step(builtins: PresetLibrary) -> None:
    recipe = recipe_for(request(preset="4-stems", options={"reranking_candidates": 3}), builtins)
    assert [s.label for s in recipe.steps] == ["vocals", "drums", "bass"] and recipe.residual_label == "other"
    assert {s.options.reranking_candidates for s in recipe.steps} == {3}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"candidates": 2}, "does not know: unknown option(s) candidates"),
        ({"reranking_candidates": 0}, "reranking_candidates: must be at least 1 (got 0)"),
        ({"acceleration": "warp"}, "'fast', 'balanced' or 'quality'"),
        ({"label": "../x"}, "used in file names"),
    ],
)
def test_bad_request_options_are_input_errors(
    builtins: PresetLibrary, options: dict[str, object], expected: str
) -> None:
    with pytest.raises(InputError) as caught:
        recipe_for(request(preset="vocals", options=options), builtins)
    assert expected in str(caught.value)


def test_unknown_preset_in_a_request(builtins: PresetLibrary) -> None:
    with pytest.raises(PresetError, match="Did you mean 'snare'"):
        recipe_for(request(preset="snares"), builtins)


# --------------------------------------------------------------------------------------------------
# slug: safe in file names on Windows, macOS and Linux; letters of any script are kept


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A man speaking", "a-man-speaking"),
        ('kick: "tight" / punchy?', "kick-tight-punchy"),
        ("Guitarra eléctrica", "guitarra-eléctrica"),
        ("ボーカル 声", "ボーカル-声"),
        ("dog's bark", "dogs-bark"),
        ("hi_hat", "hi_hat"),
        ("CON", "con-sound"),
        ("...", "sound"),
        ("", "sound"),
    ],
)
def test_slug_examples(text: str, expected: str) -> None:
    assert slug(text) == expected


def test_slug_respects_max_len() -> None:
    assert slug("a" * 50 + " b") == "a" * 40
    assert slug("abc def ghi", max_len=5) == "abc-d"
    assert slug("abc def", max_len=4) == "abc"  # never ends on a dash


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_slug_is_always_a_usable_file_name(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    result = slug(text)
    assert 0 < len(result) <= 40
    assert not re.search(r'[<>:"/\\|?*\x00-\x1f\x7f. ]', result)
    assert not result.startswith("-") and not result.endswith("-")
    folder = tmp_path_factory.mktemp("slug")
    target = folder / f"Song - {result}.target.wav"
    target.write_bytes(b"x")
    assert [p.name for p in folder.iterdir()] == [target.name]


def test_a_live_projects_processed_folder_reads_the_presets_beside_its_set(tmp_path: Path) -> None:
    """The Max device names `<Live project>/Samples/Processed` as its project: the set's presets are the
    ones beside its .als; any other folder keeps its own `sam-bridge/presets`."""
    by_info = tmp_path / "Song Project"
    (by_info / "Ableton Project Info").mkdir(parents=True)
    by_als = tmp_path / "Loose"
    by_als.mkdir()
    (by_als / "Loose.als").write_bytes(b"")
    plain = tmp_path / "Not Live"
    for project in (by_info, by_als):
        assert project_presets_dir(project / "Samples" / "Processed") == project / "sam-bridge" / "presets"
        assert project_presets_dir(project / "samples" / "PROCESSED") == project / "sam-bridge" / "presets"
        assert project_presets_dir(project) == project / "sam-bridge" / "presets"
    for folder in (plain / "Samples" / "Processed", by_info / "Samples" / "Recorded", by_info / "Processed"):
        assert project_presets_dir(folder) == folder / "sam-bridge" / "presets"
