-- @noindex
-- sam-bridge: Cancel. Asks the sam-bridge daemon to cancel every separation started from this REAPER.
-- (Installed with "sam-bridge - Separate selected items.lua", which lists it in @provides.)

local script_dir = debug.getinfo(1, "S").source:match("^@?(.*[/\\])") or ""
package.path = script_dir .. "?.lua;" .. package.path

require("sam_bridge_reaper").cancel_all()
