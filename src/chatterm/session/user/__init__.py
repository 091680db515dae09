"""What belongs to the user: the config file, the settings layers, installed models, the input history."""
