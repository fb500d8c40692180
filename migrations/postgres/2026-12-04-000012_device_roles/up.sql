-- Device roles (issue 16). What a registered device meters: `grid` (the household's connection
-- meter: settlement bills import and credits export from it), `pv` (a production meter behind the
-- grid meter: reports only), `battery` (a storage meter behind the grid meter: reports only) or
-- `submeter` (a circuit behind the grid meter: reports only). Every device registered before this
-- migration was the household's meter, so the default keeps its meaning. At most one grid meter
-- per account is a rule of `settlement::registry` for new registrations, not a constraint: older
-- registrations may already have two, and they keep being summed as before.
ALTER TABLE devices ADD COLUMN role TEXT NOT NULL DEFAULT 'grid'
    CHECK (role IN ('grid', 'pv', 'battery', 'submeter'));
