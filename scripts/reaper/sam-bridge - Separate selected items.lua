-- @description sam-bridge: Separate selected items…
-- @version 0.2.2
-- @author sam-bridge
-- @about
--   # sam-bridge for REAPER
--   Isolates any sound in the selected items by describing it (SAM Audio on fal, through the
--   sam-bridge daemon on this computer). Pick a preset or type a description; the target and the
--   residual come back as new tracks right under the source track, lined up with the item.
--   Needs sam-bridge running (`sam-bridge run`, or `sam-bridge service install` once).
-- @provides
--   [main] sam-bridge - Audition prompt on selection.lua
--   [main] sam-bridge - Cancel.lua
--   [main] sam-bridge - Collect finished stems.lua
--   [nomain] sam_bridge_core.lua
--   [nomain] sam_bridge_json.lua
--   [nomain] sam_bridge_text.lua
--   [nomain] sam_bridge_reaper.lua
--   [nomain] sam_bridge_items.lua
--   [nomain] sam_bridge_stems.lua
--   [nomain] sam_bridge_session.lua
--   [nomain] sam_bridge_estimate.lua
-- @changelog
--   The window's [ Close ] also closes a window kept open for a warning or for kept stems.
--   A cancel keeps stems that are finished (paid for) for their project; Collect shows the warnings of
--   the stems it inserts; the daemon's notes are no warnings, and flags are shown in the daemon's words.
--   Stems of a request the daemon archived (REAPER closed for over a day) still come in.
--   Stems that could not be inserted (their drive away) stay saved for "Collect finished stems";
--   a job whose project tab was closed ends the wait with a note instead of asking forever.
--   Says "sam-bridge isn't running" (with the command to start it) instead of waiting forever.
--   Requests are saved in the project: stems of earlier runs come in on the next run, or with
--   "Collect finished stems", even after REAPER restarted. No "already running" prompt (REAPER 7.03+).
--   Time selections and razor edits; renders batched; MIDI rendered without the master's FX.
--   Stems as takes, recent prompts, per-item cancel and time left in the progress window.
--   Shows the estimated cost before sending and asks above confirm_above; "Audition prompt on
--   selection" tries a prompt on the loudest 10 s; quality warnings in the progress window.

local script_dir = debug.getinfo(1, "S").source:match("^@?(.*[/\\])") or ""
package.path = script_dir .. "?.lua;" .. package.path

require("sam_bridge_reaper").separate_selected_items()
