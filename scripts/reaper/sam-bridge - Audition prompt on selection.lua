-- @noindex
-- sam-bridge: Audition prompt on selection. Separates only the loudest 10 seconds of each selected item
-- (or of its part in the time selection) with the preset or description you pick: a cheap trial before
-- paying for the whole. The stems (".audition.target", ".audition.residual") land on new tracks at the
-- window's position; the cost of the trial and of the whole part is shown before anything is sent.
-- (Installed with "sam-bridge - Separate selected items.lua", which lists it in @provides.)

local script_dir = debug.getinfo(1, "S").source:match("^@?(.*[/\\])") or ""
package.path = script_dir .. "?.lua;" .. package.path

require("sam_bridge_reaper").audition_selection()
