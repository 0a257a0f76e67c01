-- @noindex
-- sam-bridge: Collect finished stems. Inserts the stems of requests sent from this project earlier (even
-- before REAPER was restarted) and waits for those still running.
-- (Installed with "sam-bridge - Separate selected items.lua", which lists it in @provides.)

local script_dir = debug.getinfo(1, "S").source:match("^@?(.*[/\\])") or ""
package.path = script_dir .. "?.lua;" .. package.path

require("sam_bridge_reaper").collect_finished()
