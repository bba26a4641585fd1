"""What every embedviz service needs once: settings, database, auth, errors, events,
blobs, jobs and the server bootstrap. Services receive these as arguments; nothing here
keeps a module-level client."""
