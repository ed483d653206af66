-- The sample app's first table: notes kept by the demo.
CREATE TABLE notes (
  id serial PRIMARY KEY,
  body text NOT NULL
);
