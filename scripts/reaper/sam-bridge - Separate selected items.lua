-- @description sam-bridge: Separate selected items…
-- @version 0.1.0
-- @author sam-bridge
-- @about
--   # sam-bridge for REAPER
--   Isolates any sound in the selected items by describing it (SAM Audio on fal, through the
--   sam-bridge daemon on this computer). Pick a preset or type a description; the target and the
--   residual come back as new tracks right under the source track, lined up with the item.
--   Needs sam-bridge running (`sam-bridge run`, or `sam-bridge service install` once).
-- @provides
--   [main] sam-bridge - Cancel.lua
--   [main] sam-bridge - Collect finished stems.lua
--   [nomain] sam_bridge_core.lua
--   [nomain] sam_bridge_reaper.lua
-- @changelog
--   First release.

local script_dir = debug.getinfo(1, "S").source:match("^@?(.*[/\\])") or ""
package.path = script_dir .. "?.lua;" .. package.path

require("sam_bridge_reaper").separate_selected_items()
