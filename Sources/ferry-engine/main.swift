import FerryCLI

await FerryCommand.execute()
