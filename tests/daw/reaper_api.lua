-- The documented signatures of every `reaper.*` and `gfx.*` function sam-bridge's scripts call, from
-- REAPER's own ReaScript documentation (REAPER 7.x, "ReaScript API" help page,
-- https://www.reaper.fm/sdk/reascript/reascripthelp.html, Lua column; set_action_options since 7.03), and
-- `checked()`, which makes a function refuse what REAPER's Lua binding refuses (used by fake_reaper.lua).

local Api = {}

---------------------------------------------------------------------------------------------------
-- The documented signatures: name = { args, returns }. Types: "string", "number", "integer",
-- "boolean", "function", a pointer kind ("ReaProject", "MediaTrack", "MediaItem", "MediaItem_Take",
-- "PCM_source"), "identifier" (any pointer), "ReaProject" also accepts 0/nil (the current project);
-- a trailing "?" marks an optional argument (may be nil) or a return that may be nil.
---------------------------------------------------------------------------------------------------

local P, TR, IT, TK, SRC = "ReaProject", "MediaTrack", "MediaItem", "MediaItem_Take", "PCM_source"

Api.SIGNATURES = {
  GetOS = { {}, { "string" } },
  time_precise = { {}, { "number" } },
  GetResourcePath = { {}, { "string" } },
  EnumProjects = { { "integer" }, { "ReaProject?", "string" } },
  GetProjectPath = { {}, { "string" } },
  EnumerateFiles = { { "string", "integer" }, { "string?" } },
  EnumerateSubdirectories = { { "string", "integer" }, { "string?" } },
  ExecProcess = { { "string", "integer" }, { "string?" } },
  GetMousePosition = { {}, { "integer", "integer" } },
  get_action_context = { {}, { "boolean", "string", "integer", "integer", "integer", "integer", "integer", "string" } },
  set_action_options = { { "integer" }, {} },
  CountSelectedMediaItems = { { P }, { "integer" } },
  GetSelectedMediaItem = { { P, "integer" }, { "MediaItem?" } },
  SelectAllMediaItems = { { P, "boolean" }, {} },
  SetMediaItemSelected = { { IT, "boolean" }, {} },
  CountTracks = { { P }, { "integer" } },
  GetTrack = { { P, "integer" }, { "MediaTrack?" } },
  GetTrackGUID = { { TR }, { "string" } },
  InsertTrackAtIndex = { { "integer", "boolean" }, {} },
  GetSetMediaTrackInfo_String = { { TR, "string", "string", "boolean" }, { "boolean", "string" } },
  GetMediaTrackInfo_Value = { { TR, "string" }, { "number" } },
  SetMediaTrackInfo_Value = { { TR, "string", "number" }, { "boolean" } },
  CountTrackMediaItems = { { TR }, { "integer" } },
  GetTrackMediaItem = { { TR, "integer" }, { "MediaItem?" } },
  GetMediaItem_Track = { { IT }, { "MediaTrack" } },
  GetMediaItemInfo_Value = { { IT, "string" }, { "number" } },
  SetMediaItemInfo_Value = { { IT, "string", "number" }, { "boolean" } },
  GetSetMediaItemInfo_String = { { IT, "string", "string", "boolean" }, { "boolean", "string" } },
  GetActiveTake = { { IT }, { "MediaItem_Take?" } },
  AddMediaItemToTrack = { { TR }, { "MediaItem" } },
  AddTakeToMediaItem = { { IT }, { "MediaItem_Take" } },
  TakeIsMIDI = { { TK }, { "boolean" } },
  GetMediaItemTake_Source = { { TK }, { "PCM_source" } },
  SetMediaItemTake_Source = { { TK, SRC }, { "boolean" } },
  GetMediaItemTakeInfo_Value = { { TK, "string" }, { "number" } },
  SetMediaItemTakeInfo_Value = { { TK, "string", "number" }, { "boolean" } },
  GetSetMediaItemTakeInfo_String = { { TK, "string", "string", "boolean" }, { "boolean", "string" } },
  TakeFX_GetCount = { { TK }, { "integer" } },
  CountTakeEnvelopes = { { TK }, { "integer" } },
  GetTakeNumStretchMarkers = { { TK }, { "integer" } },
  GetMediaSourceParent = { { SRC }, { "PCM_source?" } },
  GetMediaSourceFileName = { { SRC }, { "string" } },
  GetMediaSourceLength = { { SRC }, { "number", "boolean" } },
  GetMediaSourceNumChannels = { { SRC }, { "integer" } },
  GetMediaSourceSampleRate = { { SRC }, { "integer" } },
  PCM_Source_CreateFromFile = { { "string" }, { "PCM_source?" } },
  ValidatePtr2 = { { P, "identifier", "string" }, { "boolean" } },
  GetSetProjectInfo = { { P, "string", "number", "boolean" }, { "number" } },
  GetSetProjectInfo_String = { { P, "string", "string", "boolean" }, { "boolean", "string" } },
  GetSet_LoopTimeRange2 = { { P, "boolean", "boolean", "number", "number", "boolean" }, { "number", "number" } },
  Main_OnCommand = { { "integer", "integer" }, {} },
  RecursiveCreateDirectory = { { "string", "integer" }, { "integer" } },
  file_exists = { { "string" }, { "boolean" } },
  ShowMessageBox = { { "string", "string", "integer" }, { "integer" } },
  GetUserInputs = { { "string", "integer", "string", "string" }, { "boolean", "string" } },
  GetExtState = { { "string", "string" }, { "string" } },
  SetExtState = { { "string", "string", "string", "boolean" }, {} },
  HasExtState = { { "string", "string" }, { "boolean" } },
  DeleteExtState = { { "string", "string", "boolean" }, {} },
  GetProjExtState = { { P, "string", "string" }, { "integer", "string" } },
  SetProjExtState = { { P, "string", "string", "string" }, { "integer" } },
  EnumProjExtState = { { P, "string", "integer" }, { "boolean", "string?", "string?" } },
  defer = { { "function" }, { "boolean" } },
  atexit = { { "function" }, { "boolean" } },
  Undo_BeginBlock = { {}, {} },
  Undo_EndBlock = { { "string", "integer" }, {} },
  PreventUIRefresh = { { "integer" }, {} },
  UpdateArrange = { {}, {} },
  TrackList_AdjustWindows = { { "boolean" }, {} },
  ShowConsoleMsg = { { "string" }, {} },
}

-- gfx.* as the same documentation gives them (optional arguments marked "?").
Api.GFX_SIGNATURES = {
  init = { { "string", "number?", "number?", "number?", "number?", "number?" }, { "number" } },
  quit = { {}, {} },
  showmenu = { { "string" }, { "integer" } },
  getchar = { { "number?" }, { "number" } },
  set = { { "number", "number?", "number?", "number?", "number?", "number?", "number?" }, {} },
  rect = { { "number", "number", "number", "number", "number?" }, {} },
  setfont = { { "integer", "string?", "number?", "number?" }, {} },
  measurestr = { { "string" }, { "number", "number" } },
  drawstr = { { "string", "number?", "number?", "number?" }, {} },
  update = { {}, {} },
}

local POINTER_KINDS = { ReaProject = "project", MediaTrack = "track", MediaItem = "item", MediaItem_Take = "take",
                        PCM_source = "source" }

local function type_ok(value, want)
  local optional = want:sub(-1) == "?"
  if optional then want = want:sub(1, -2) end
  if value == nil then return optional or want == "ReaProject" end
  if want == "string" or want == "boolean" or want == "function" then return type(value) == want end
  if want == "number" then return type(value) == "number" end
  if want == "integer" then return math.type(value) == "integer" or (type(value) == "number" and value == math.floor(value)) end
  if want == "identifier" then return type(value) == "table" and value.kind ~= nil end
  if want == "ReaProject" and value == 0 then return true end
  local kind = POINTER_KINDS[want]
  return kind ~= nil and type(value) == "table" and value.kind == kind
end

local function describe(value)
  if type(value) == "table" and value.kind then return value.kind end
  return type(value)
end

--- Wraps `impl` so calls and answers are checked against the documented signature of `name`.
function Api.checked(name, impl, signatures, prefix)
  prefix = prefix or "reaper."
  local signature = assert((signatures or Api.SIGNATURES)[name], "no documented signature for " .. prefix .. name)
  local args, returns = signature[1], signature[2]
  return function(...)
    local n = select("#", ...)
    if n > #args then
      error(string.format("%s%s takes %d argument(s), got %d", prefix, name, #args, n), 2)
    end
    for i, want in ipairs(args) do
      local value = (select(i, ...))
      if not type_ok(value, want) then
        error(string.format("bad argument #%d to '%s%s' (%s expected, got %s)", i, prefix, name, want, describe(value)), 2)
      end
    end
    local results = table.pack(impl(...))
    assert(results.n <= #returns, "fake " .. prefix .. name .. " returned more than documented")
    for i, want in ipairs(returns) do
      assert(type_ok(results[i], want), "fake " .. prefix .. name .. " returned a " .. describe(results[i])
        .. " as value #" .. i .. ", documented: " .. want)
    end
    return table.unpack(results, 1, results.n)
  end
end

return Api
